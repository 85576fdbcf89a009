"""The HTTP API's answers and query parameters, as its OpenAPI document shows them."""

from typing import Annotated, Any

from fastapi import Query
from pydantic import BaseModel, Field

from imgclf.inference.settings import MAX_TOP_K


class Ranked(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    label: str | None = Field(description="the predicted class; null when the top probability is under the "
                              "reject threshold (the model does not know)")
    probability: float = Field(description="the top class's probability (temperature-calibrated)")
    top_k: list[Ranked]
    labels: list[Ranked] | None = Field(None, description="a multi-label model only: every class whose probability "
                                        "reaches its threshold, most probable first (label is the first; null when "
                                        "none does)")
    reason: str | None = Field(None, description="with label null: why, e.g. top probability 0.412 < 0.600")
    explanation: str | None = Field(None, description="with explain=true: a Grad-CAM overlay of the image as "
                                    "the model saw it (base64 PNG), showing where it found the predicted class")


class FilePrediction(Prediction):
    file: str | None = None


class Health(BaseModel):
    status: str


class Error(BaseModel):
    detail: Any


TopK = Annotated[int, Query(ge=1, le=MAX_TOP_K, description="how many ranked classes to return")]
RejectBelow = Annotated[float | None, Query(gt=0, lt=1, description="answer label null (with a reason) when the "
                                            "top probability is under this; default: the server's "
                                            "--reject-below or --target-accuracy threshold, else none")]
Explain = Annotated[bool, Query(description="add a Grad-CAM overlay of each image (needs a torch checkpoint, "
                                            "not ONNX; costs a backward pass)")]


def error_responses(with_key: bool) -> dict[int | str, dict[str, Any]]:
    """The 4xx answers the prediction routes document; 401 only where the server wants a key."""
    errors: dict[int | str, dict[str, Any]] = {
        400: {"model": Error, "description": "a malformed request body"},
        413: {"model": Error, "description": "upload, image pixels, request pixels or file count over a limit"},
        415: {"model": Error, "description": "not an image in a supported format"},
        422: {"model": Error, "description": "a missing field, bad parameter or unreadable image"},
    }
    if with_key:
        errors[401] = {"model": Error, "description": "missing or wrong X-API-Key"}
    return errors
