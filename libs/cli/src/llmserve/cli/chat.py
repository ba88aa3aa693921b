"""`llmserve chat`: one question to the router's gRPC API, the answer streamed to the terminal."""

from __future__ import annotations

import sys

import grpc

from llmserve.cli.registry_access import key_metadata
from llmserve.v1 import common_pb2, inference_pb2, inference_pb2_grpc


def chat(addr: str, prompt: str, model: str, max_tokens: int, temperature: float, system: str | None) -> int:
    messages = []
    if system:
        messages.append(common_pb2.ChatMessage(role="system", content=system))
    messages.append(common_pb2.ChatMessage(role="user", content=prompt))
    request = inference_pb2.GenerateRequest(
        model=model,
        messages=inference_pb2.ChatMessages(messages=messages),
        sampling=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=temperature),
    )
    with grpc.insecure_channel(addr) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        try:
            for response in stub.GenerateStream(request, timeout=600, metadata=key_metadata()):
                sys.stdout.write(response.text)
                sys.stdout.flush()
        except grpc.RpcError as exc:
            print(f"\nerror: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
    sys.stdout.write("\n")
    return 0
