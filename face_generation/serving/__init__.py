"""The HTTP service and web page for trained generators: `python -m face_generation.serve`.

    models.py   which models are served, from checkpoints or MLflow URIs; one lock each
    uploads.py  photos checked (bytes, type by content, header pixels) before decoding
    app.py      the FastAPI app: the page in static/, /generate, /reference, /reconstruct
The MLflow pyfunc model, which `mlflow models serve` serves, is runtime/mlflow_model.py.
"""
