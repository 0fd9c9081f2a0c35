"""What a trained generator needs at run time, for training, evaluation, inference and serving.

The bottom layer of the package (with models/): device choice (`device`), the family contract
and registry (`family`, `registry`), the checkpoint format (`checkpoint`), loading a trained
generator and sampling from it (`generator`), image conversion and PNG files (`images`), and
the generator as an MLflow pyfunc model (`mlflow_model`). Nothing here imports training,
evaluation, tracking or serving.
"""
