"""The generator's model code as MLflow logs it ("models from code"): MLflow runs this file
to build the model, so no pickled Python object is stored with it."""

from mlflow.models import set_model

from face_generation.runtime.mlflow_model import GeneratorModel

set_model(GeneratorModel())
