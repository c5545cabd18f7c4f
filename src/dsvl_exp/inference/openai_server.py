"""The OpenAI-compatible HTTP API around one loaded model (FastAPI; `serve --api` runs it with
uvicorn): `POST /v1/chat/completions` (also streamed as server-sent events) and `GET /v1/models`.
Errors are OpenAI's JSON shape: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

from fastapi import FastAPI, Request  # at module level: the endpoints' annotations are resolved here
from fastapi.responses import JSONResponse, StreamingResponse

from dsvl_exp.inference.access import AccessPolicy
from dsvl_exp.inference.batching import Answer, Batcher
from dsvl_exp.inference.openai_messages import RequestError, parse_request

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               413: "invalid_request_error", 500: "server_error"}


def error_body(status: int, message: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"), "param": param,
                      "code": {401: "invalid_api_key", 413: "request_too_large"}.get(status)}}


def completion_body(answer: Answer, model_name: str, completion_id: str, created: int) -> dict:
    return {
        "id": completion_id, "object": "chat.completion", "created": created, "model": model_name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                     "finish_reason": answer.finish_reason, "logprobs": None}],
        "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
                  "total_tokens": answer.prompt_tokens + answer.completion_tokens},
    }


def chunk(model_name: str, completion_id: str, created: int, delta: dict, finish_reason=None, usage=None) -> str:
    body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}
    if usage is not None:
        body["usage"] = usage
    return f"data: {json.dumps(body)}\n\n"


def build_app(loaded, policy: AccessPolicy, model_name: str, default_max_tokens: int = 64,
              file_root: Path | None = None, max_batch: int = 16):
    app = FastAPI(title="dsvl_exp OpenAI-compatible API")
    batcher = Batcher(loaded, max_batch=max_batch)
    app.state.batcher = batcher

    def failure(status: int, message: str, param: str | None = None) -> JSONResponse:
        return JSONResponse(error_body(status, message, param), status_code=status)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if not policy.header_ok(request.headers.get("authorization")):
            return failure(401, "missing or wrong credentials: send Authorization: Bearer <token> (or Basic user:pass)")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > policy.max_upload_bytes * 4 // 3 + 65536:
            # a base64 image is 4/3 of its bytes; each image is checked against the limit itself too
            return failure(413, f"the request body is {int(length)} bytes; images may be at most "
                                f"{policy.max_upload_bytes / 2**20:g} MB (--max-upload-mb)")
        return await call_next(request)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "dsvl_exp"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            return failure(400, f"the body is not JSON: {error}")
        try:
            parsed = parse_request(body, policy, file_root, loaded.max_images, default_max_tokens)
        except RequestError as error:
            return failure(error.status, str(error), error.param)
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        job = batcher.submit(parsed)
        if not parsed.stream:
            answer = await asyncio.wrap_future(job.future)
            return completion_body(answer, model_name, completion_id, created)

        def events():
            yield chunk(model_name, completion_id, created, {"role": "assistant", "content": ""})
            while (piece := job.pieces.get()) is not None:
                yield chunk(model_name, completion_id, created, {"content": piece})
            answer = job.future.result()
            usage = None
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = completion_body(answer, model_name, completion_id, created)["usage"]
            yield chunk(model_name, completion_id, created, {}, answer.finish_reason, usage)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app
