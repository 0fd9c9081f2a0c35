"""face_generation: train, evaluate and serve face-image generators with DVC and MLflow."""

__version__ = "0.1.0"
