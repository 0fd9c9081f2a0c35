"""The HTTP service for trained generators (its own issue); the MLflow pyfunc model is in
face_generation/runtime/mlflow_model.py."""
