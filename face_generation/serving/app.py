"""The HTTP API and the web page over the served models (FastAPI; OpenAPI docs at /docs).

    GET  /              the page (static/index.html, with app.js and style.css: no build step)
    GET  /docs          the API documentation, drawn from /openapi.json by static/docs.js
    GET  /health        answers while models are busy: inference runs in worker threads
    GET  /models        name, family, version, resolution, inputs and sampling options of each
    POST /generate      JSON {model, n, seed, options} → a PNG grid, or base64 PNGs as JSON
    POST /reference     multipart photos (or test-split faces) → n variants of each
    POST /reconstruct   multipart photos (or test-split faces) → each beside its reconstruction
    GET  /test-face     one face of the packed test split, as the model sees it

Every refusal is a 4xx whose JSON `detail` is one line. No request names a path: models are
looked up by name, test faces by index, page files in a fixed list; uploads stay in memory
(Starlette spools a large one to an anonymous temporary file) and are never written out.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
import torch
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from omegaconf import DictConfig
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from face_generation.errors import describe
from face_generation.runtime.family import RECONSTRUCT, SAMPLE
from face_generation.runtime.generator import generate, photo_refusal
from face_generation.runtime.images import grid_pixels, png_bytes, to_uint8
from face_generation.runtime.options import OptionError, RequestLimits, check_range, read_options
from face_generation.runtime.pixels import to_float_nchw
from face_generation.serving.guard import RequestGuard
from face_generation.serving.models import ServedModel
from face_generation.serving.uploads import (
    Photo,
    Refusal,
    UploadLimits,
    check_photo,
    decode_face,
    display_name,
)

STATIC = Path(__file__).with_name("static")
PAGE_FILES = {  # all /static serves
    "app.js": "text/javascript",
    "docs.js": "text/javascript",
    "style.css": "text/css",
}
Format = Literal["png", "json"]
OptionValue = bool | int | float | str
T = TypeVar("T")


class GenerateRequest(BaseModel):
    model: str = Field(description="a model name from GET /models")
    n: int | None = Field(None, description="how many images; default serve.default_n")
    seed: int = Field(0, description="the noise seed: the same seed gives the same images")
    options: dict[str, OptionValue] = Field(
        default_factory=dict,
        description='sampling options of the model (GET /models lists them with their defaults), e.g. {"temperature": 0.8} or {"steps": 50, "guidance": 3}',
    )
    format: Format = Field("png", description="png: one grid image; json: base64 PNGs")


class Images(BaseModel):
    model: str
    version: str
    seed: int | None = Field(description="the noise seed (none for reconstructions)")
    options: dict[str, OptionValue] = Field(description="every sampling option, as used")
    seconds: float = Field(description="time the model took for this request")
    images: list[str] = Field(description="base64 PNGs (with /reference: n per input, in order)")
    inputs: list[str] = Field(description="the photos as the model saw them (base64 PNGs)")


PNG_OR_JSON: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "model": Images, "description": "a PNG grid or JSON"}
}


def create_app(models: dict[str, ServedModel], cfg: DictConfig) -> FastAPI:
    """The service for `models`, with the limits and defaults of `cfg.serve`."""
    serve = cfg.serve
    limits = UploadLimits.from_config(serve.limits)
    request_limits = RequestLimits.from_config(serve.limits)  # inference's and MLflow's too
    app = FastAPI(
        docs_url=None,  # FastAPI's loads Swagger UI from a CDN: /docs below works offline
        redoc_url=None,
        title="face_generation",
        summary="Generate faces with the trained models: grids, variants of reference photos, reconstructions.",
    )
    app.add_middleware(
        RequestGuard,
        max_requests=int(serve.max_requests),
        body_timeout=float(serve.body_timeout_s),
        max_json_bytes=limits.max_json_bytes,
        max_multipart_bytes=limits.max_body_bytes,
    )

    @app.exception_handler(Refusal)
    async def refused(request: Request, refusal: Refusal) -> JSONResponse:
        return JSONResponse({"detail": refusal.reason}, status_code=refusal.status)

    @app.exception_handler(OptionError)
    async def option_refused(request: Request, error: OptionError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        reasons = [f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in error.errors()]
        return JSONResponse({"detail": "; ".join(reasons)}, status_code=422)

    def served(name: str) -> ServedModel:
        if name not in models:
            raise Refusal(404, f"no model {name[:80]!r} here; models: {', '.join(models)}")
        return models[name]

    def count_and_seed(n: int | None, seed: int) -> int:
        n = int(serve.default_n) if n is None else n
        check_range("n", n, 1, request_limits.max_n)
        check_range("seed", seed, 0, request_limits.max_seed)
        return n

    async def run(model: ServedModel, work: Callable[[], T]) -> tuple[T, float]:
        """`work` on the model's thread; what the family refuses (sampler="bogus") is a 422
        with the family's own sentence (the contract: options it cannot use are ValueErrors)."""
        try:
            return await run_in_threadpool(model.run, work)
        except ValueError as error:
            raise Refusal(422, describe(error)) from None

    async def read_inputs(
        model: ServedModel, photos: Sequence[UploadFile], test_faces: str
    ) -> list[Photo | int]:
        """The checked uploads and test-face indices of a request, in order (none decoded)."""
        indices = parse_indices(test_faces, model)
        total = len(photos) + len(indices)
        if total == 0:
            raise Refusal(422, "upload at least one photo or pick a test face")
        if total > limits.max_files:
            raise Refusal(413, f"{total} photos; the limit is {limits.max_files} per request")
        checked: list[Photo | int] = []
        for upload in photos:
            name = display_name(upload.filename)
            data = await upload.read(limits.max_bytes + 1)  # one byte more shows it is too large
            checked.append(await run_in_threadpool(check_photo, name, data, limits))
        return [*checked, *indices]

    def parse_indices(text: str, model: ServedModel) -> list[int]:
        parts = [part.strip() for part in text.split(",") if part.strip()]
        if not parts:
            return []
        count = 0 if model.test_faces is None else len(model.test_faces)
        if count == 0:
            raise Refusal(422, f"no test faces are offered for {model.name}")
        if not all(part.isascii() and part.isdigit() and int(part) < count for part in parts):
            raise Refusal(422, f"test faces are numbers from 0 to {count - 1}, got {text[:40]!r}")
        return [int(part) for part in parts]

    def faces(model: ServedModel, inputs: Sequence[Photo | int]) -> torch.Tensor:
        """The inputs decoded at the model's resolution: N×3×R×R in [-1, 1]."""

        def face(item: Photo | int) -> np.ndarray:
            if isinstance(item, Photo):
                return decode_face(item, model.generator.resolution, limits)
            assert model.test_faces is not None  # parse_indices checked it
            return np.asarray(model.test_faces[item])

        return to_float_nchw(np.stack([face(item) for item in inputs]), None)

    def answer(
        model: ServedModel,
        output_format: Format,
        seed: int | None,
        options: dict[str, Any],
        seconds: float,
        images: np.ndarray,
        inputs: np.ndarray | None = None,
    ) -> Response:
        """PNG: a grid, each input first in the row of its outputs; JSON: `Images`."""
        gutter = int(serve.grid_gutter)
        if output_format == "json":
            result = Images(
                model=model.name,
                version=model.version,
                seed=seed,
                options=options,
                seconds=round(seconds, 4),
                images=[encode(image) for image in images],
                inputs=[] if inputs is None else [encode(image) for image in inputs],
            )
            return JSONResponse(result.model_dump())
        if inputs is None:
            grid = grid_pixels(images, gutter=gutter)
        else:
            rows = np.split(images, len(inputs))  # the outputs of each input
            grid = grid_pixels(
                np.concatenate(
                    [np.concatenate([inputs[i : i + 1], row]) for i, row in enumerate(rows)]
                ),
                columns=len(rows[0]) + 1,
                gutter=gutter,
            )
        headers = {
            "X-Model": model.name,
            "X-Model-Version": model.version,
            "X-Seed": "" if seed is None else str(seed),
            "X-Seconds": f"{seconds:.3f}",
        }
        return Response(png_bytes(grid), media_type="image/png", headers=headers)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    async def api_docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    async def page_file(name: str) -> FileResponse:
        if name not in PAGE_FILES:  # a fixed list: no request reaches another file
            raise Refusal(404, f"no page file {name[:40]!r}")
        return FileResponse(STATIC / name, media_type=PAGE_FILES[name])

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Whether the service is up; answers while models are busy."""
        return {"status": "ok", "models": list(models)}

    @app.get("/models")
    async def list_models() -> list[dict[str, Any]]:
        """Every served model: name, family, version, resolution, which inputs it takes
        (generate, reference photos, reconstruct), its sampling options with their defaults,
        and how many test-split faces it offers as reference photos."""
        return [model.describe() for model in models.values()]

    @app.post("/generate", response_class=Response, responses=PNG_OR_JSON)
    async def generate_images(request: GenerateRequest) -> Response:
        """n images from a seed: the same (model, n, seed, options) give the same images here,
        in `python -m face_generation.inference` and in the MLflow model."""
        model = served(request.model)
        if SAMPLE not in model.generator.family.capabilities:
            raise Refusal(422, f"{model.name} does not generate images")
        n = count_and_seed(request.n, request.seed)
        options = read_options(request.options, model.generator, request_limits)

        def work() -> np.ndarray:
            return to_uint8(generate(model.generator, n, request.seed, **options))

        images, seconds = await run(model, work)
        return await run_in_threadpool(
            answer, model, request.format, request.seed, options, seconds, images
        )

    @app.post("/reference", response_class=Response, responses=PNG_OR_JSON)
    async def reference(
        model: Annotated[str, Form(description="a model name from GET /models")],
        photos: Annotated[
            list[UploadFile], File(description="JPEG, PNG or WebP reference photos")
        ] = [],  # noqa: B006  (FastAPI copies defaults)
        test_faces: Annotated[str, Form(description="test-split faces by index: 0,3")] = "",
        n: Annotated[int | None, Form(description="variants per reference")] = None,
        seed: Annotated[int, Form()] = 0,
        options: Annotated[str, Form(description='JSON, e.g. {"guidance": 3}')] = "{}",
        format: Annotated[Format, Form()] = "png",
    ) -> Response:
        """n variants of each reference (a conditional model's condition, computed from the
        photo), seeded: the same request gives the same images."""
        served_model = served(model)
        generator = served_model.generator
        if not generator.takes_photos:
            raise Refusal(
                422, f"{model}: {photo_refusal(generator.family, generator.config.model)}"
            )
        n = count_and_seed(n, seed)
        chosen = read_options(parse_options(options), served_model.generator, request_limits)
        inputs = await read_inputs(served_model, photos, test_faces)

        def work() -> tuple[np.ndarray, np.ndarray]:
            references = faces(served_model, inputs)
            conditions = served_model.generator.conditions_from_photos(references)
            images = generate(
                served_model.generator,
                n * len(inputs),
                seed,
                cond=conditions.repeat_interleave(n, dim=0),
                **chosen,
            )
            return to_uint8(images), to_uint8(references)

        (images, references), seconds = await run(served_model, work)
        return await run_in_threadpool(
            answer, served_model, format, seed, chosen, seconds, images, references
        )

    @app.post("/reconstruct", response_class=Response, responses=PNG_OR_JSON)
    async def reconstruct(
        model: Annotated[str, Form(description="a model name from GET /models")],
        photos: Annotated[list[UploadFile], File(description="JPEG, PNG or WebP photos")] = [],  # noqa: B006
        test_faces: Annotated[str, Form(description="test-split faces by index: 0,3")] = "",
        format: Annotated[Format, Form()] = "png",
    ) -> Response:
        """Each photo beside its reconstruction (its round trip through the model)."""
        served_model = served(model)
        if RECONSTRUCT not in served_model.generator.family.capabilities:
            raise Refusal(422, f"{model} does not reconstruct photos")
        inputs = await read_inputs(served_model, photos, test_faces)

        def work() -> tuple[np.ndarray, np.ndarray]:
            originals = faces(served_model, inputs)
            return to_uint8(served_model.generator.reconstruct(originals)), to_uint8(originals)

        (images, originals), seconds = await run(served_model, work)
        return await run_in_threadpool(
            answer, served_model, format, None, {}, seconds, images, originals
        )

    @app.get("/test-face", response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def test_face(
        model: Annotated[str, Query(description="a model name from GET /models")],
        index: Annotated[int, Query(ge=0)],
    ) -> Response:
        """One face of the packed test split at the model's resolution, as a PNG."""
        served_model = served(model)
        [chosen] = parse_indices(str(index), served_model)
        assert served_model.test_faces is not None
        return Response(
            png_bytes(np.asarray(served_model.test_faces[chosen])), media_type="image/png"
        )

    return app


def parse_options(text: str) -> dict[str, Any]:
    """The `options` field of a multipart request: a JSON object."""
    try:
        options = json.loads(text or "{}")
    except json.JSONDecodeError as error:
        raise Refusal(422, f"options must be a JSON object: {error}") from None
    if not isinstance(options, dict):
        raise Refusal(422, f"options must be a JSON object, got {text[:40]!r}")
    return options


def encode(pixels: np.ndarray) -> str:
    return base64.b64encode(png_bytes(pixels)).decode("ascii")
