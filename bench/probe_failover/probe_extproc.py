"""Tiny ext_proc server for the upstream (per-attempt) filter of the probe.

Per request headers (sent by the probe client, seen in the request_headers message):
  x-hold:    1 = hold the response_headers answer until the first content event (default 1)
  x-fail-as: last_immediate (status503, but immediate on attempt 2, the last) |
             status503 (then keep answering body messages) | status503_close (then end the
             gRPC stream with OK) | immediate | close (gRPC UNAVAILABLE) | none  (how a pre-content failure is reported)
  x-ftt:     first-token timeout in seconds (server-side stall bound, default 1.0)
  x-extend:  1 = extend Envoy's message timer while holding (override_message_timeout)
"""

import asyncio
import sys
import time

import grpc
from google.protobuf.duration_pb2 import Duration

sys.path.insert(0, "/work/wt-failover")
from extproc.transport.pb import base_pb2, ext_proc_grpc, http_status_pb2, processing_mode_pb2
from extproc.transport.pb import ext_proc_pb2 as pb

T0 = time.time()
FULL_DUPLEX = 4
STREAMED_MODE = processing_mode_pb2.ProcessingMode(
    request_header_mode=1,
    response_header_mode=1,
    request_body_mode=0,
    response_body_mode=1,
    request_trailer_mode=2,
    response_trailer_mode=2,
)


def log(sid: int, *a) -> None:
    print(f"{time.time() - T0:8.3f} s{sid}", *a, flush=True)


def classify(events: list[bytes]) -> str | None:
    for ev in events:
        if b"event: error" in ev or b'"type":"error"' in ev:
            return "error"
        if b'"content"' in ev or b"content_block_delta" in ev:
            return "content"
        if b"[DONE]" in ev:
            return "end"
    return None


def headers_of(hm) -> dict[str, str]:
    return {h.key: (h.raw_value.decode() if h.raw_value else h.value) for h in hm.headers}


class Processor(ext_proc_grpc.ExternalProcessorServicer):
    n = 0

    async def Process(self, request_iterator, context):  # noqa: N802 (gRPC method name)
        Processor.n += 1
        sid = Processor.n
        q: asyncio.Queue = asyncio.Queue()

        async def pump():
            try:
                async for m in request_iterator:
                    await q.put(m)
            except Exception as e:  # stream reset by Envoy
                log(sid, "recv error", type(e).__name__)
            await q.put(None)

        reader = asyncio.create_task(pump())
        opts = {"hold": "1", "fail": "status503", "ftt": 1.0, "extend": "1"}
        full_duplex = False
        holding = False
        deadline = None
        pending_bodies: list = []
        buf = b""
        try:
            while True:
                timeout = None if deadline is None else max(0.0, deadline - time.time())
                try:
                    m = await asyncio.wait_for(q.get(), timeout)
                except TimeoutError:
                    log(sid, "first-token timeout: stall before content")
                    async for r in self.fail(sid, opts, context, "stall"):
                        yield r
                    if opts["fail"] != "status503":
                        return
                    for b in pending_bodies:
                        yield self.body_reply(
                            b"" if full_duplex else b.body, b.end_of_stream, full_duplex
                        )
                    pending_bodies, holding, deadline = [], False, None
                    continue
                if m is None:
                    log(sid, "stream closed by envoy")
                    return
                kind = m.WhichOneof("request")
                if m.HasField("protocol_config"):
                    full_duplex = m.protocol_config.response_body_mode == FULL_DUPLEX
                if kind == "request_headers":
                    h = headers_of(m.request_headers.headers)
                    opts["hold"] = h.get("x-hold", "1")
                    opts["fail"] = h.get("x-fail-as", "status503")
                    if opts["fail"] == "last_immediate":  # 503 to retry; on the last attempt answer
                        last = h.get("x-envoy-attempt-count") == "2"
                        opts["fail"] = "immediate" if last else "status503"
                    opts["ftt"] = float(h.get("x-ftt", "1.0"))
                    opts["extend"] = h.get("x-extend", "1")
                    log(
                        sid,
                        "request_headers",
                        h.get(":path"),
                        "attempt",
                        h.get("x-envoy-attempt-count"),
                        "protocol_config",
                        str(m.protocol_config).replace("\n", " "),
                    )
                    opts["override_at"] = h.get("x-override-at", "")
                    r = pb.ProcessingResponse(request_headers=pb.HeadersResponse())
                    if opts["override_at"] == "req_headers":
                        r.mode_override.CopyFrom(STREAMED_MODE)
                    yield r
                elif kind == "request_body":
                    r = pb.ProcessingResponse(request_body=pb.BodyResponse())
                    if opts.get("override_at") == "req_body":
                        r.mode_override.CopyFrom(STREAMED_MODE)
                    log(
                        sid,
                        "request_body",
                        len(m.request_body.body),
                        "override",
                        opts.get("override_at"),
                    )
                    yield r
                elif kind == "response_headers":
                    h = headers_of(m.response_headers.headers)
                    log(sid, "response_headers", h.get(":status"), h.get("content-type"))
                    if (
                        opts["hold"] == "1"
                        and h.get(":status") == "200"
                        and "event-stream" in h.get("content-type", "")
                    ):
                        holding = True
                        deadline = time.time() + opts["ftt"]
                        log(sid, "holding response headers")
                        if opts["extend"] == "1":
                            yield pb.ProcessingResponse(
                                override_message_timeout=Duration(seconds=int(opts["ftt"]) + 5)
                            )
                    else:
                        yield pb.ProcessingResponse(response_headers=pb.HeadersResponse())
                elif kind == "response_body":
                    body = m.response_body
                    log(
                        sid,
                        "response_body",
                        len(body.body),
                        "eos",
                        body.end_of_stream,
                        repr(body.body[:60]),
                    )
                    if not holding:
                        yield self.body_reply(body.body, body.end_of_stream, full_duplex)
                        continue
                    pending_bodies.append(body)
                    buf += body.body
                    events = buf.split(b"\n\n")
                    verdict = classify(events[:-1] if not body.end_of_stream else events)
                    if verdict is None and body.end_of_stream:
                        verdict = "eos"
                    if verdict in ("error", "eos"):
                        log(sid, "pre-content failure:", verdict)
                        async for r in self.fail(sid, opts, context, verdict):
                            yield r
                        if opts["fail"] != "status503":
                            return
                        # answer the body messages Envoy already sent, and any later ones
                        for b in pending_bodies:
                            yield self.body_reply(
                                b"" if full_duplex else b.body, b.end_of_stream, full_duplex
                            )
                        pending_bodies, holding, deadline = [], False, None
                    if verdict in ("content", "end"):
                        log(
                            sid,
                            "first content: releasing headers +",
                            len(pending_bodies),
                            "held chunks",
                        )
                        holding, deadline = False, None
                        yield pb.ProcessingResponse(response_headers=pb.HeadersResponse())
                        if full_duplex:
                            data = b"".join(b.body for b in pending_bodies)
                            yield self.body_reply(data, pending_bodies[-1].end_of_stream, True)
                        else:
                            for b in pending_bodies:
                                yield self.body_reply(b.body, b.end_of_stream, False)
                        pending_bodies = []
                elif kind == "response_trailers":
                    yield pb.ProcessingResponse(response_trailers=pb.TrailersResponse())
                else:
                    log(sid, "unexpected", kind)
        finally:
            reader.cancel()

    @staticmethod
    def body_reply(data: bytes, eos: bool, full_duplex: bool):
        if full_duplex:
            mut = pb.BodyMutation(
                streamed_response=pb.StreamedBodyResponse(body=data, end_of_stream=eos)
            )
            return pb.ProcessingResponse(
                response_body=pb.BodyResponse(response=pb.CommonResponse(body_mutation=mut))
            )
        return pb.ProcessingResponse(response_body=pb.BodyResponse())

    async def fail(self, sid, opts, context, why):
        how = opts["fail"]
        log(sid, "failing attempt as", how, "because", why)
        if how in ("status503", "status503_close"):
            hv = base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=":status", raw_value=b"503")
            )
            hv2 = base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key="x-probe-failover", raw_value=why.encode())
            )
            yield pb.ProcessingResponse(
                response_headers=pb.HeadersResponse(
                    response=pb.CommonResponse(
                        header_mutation=pb.HeaderMutation(set_headers=[hv, hv2])
                    )
                )
            )
        elif how == "immediate":
            yield pb.ProcessingResponse(
                immediate_response=pb.ImmediateResponse(
                    status=http_status_pb2.HttpStatus(code=503),
                    body=b'{"probe":"immediate"}',
                    details="probe_" + why,
                )
            )
            await asyncio.sleep(0.2)
        elif how == "close":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "probe: " + why)
        elif how == "none":
            await asyncio.sleep(60)


async def main(port: int) -> None:
    server = grpc.aio.server()
    ext_proc_grpc.add_ExternalProcessorServicer_to_server(Processor(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("extproc ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
