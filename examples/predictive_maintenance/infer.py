"""A local app on the device: send vibration windows to the agent over Open Inference Protocol v2.

    python -m examples.predictive_maintenance.infer --url http://127.0.0.1:8000 --model bearing-fault-x86 \\
        --split field --windows 24

Computes the model inputs the way the device does (:func:`data.model_inputs`: order spectra + condition
indicators), posts them as a v2 JSON request (``POST /v2/models/{name}/infer``), and prints the predicted
condition of each window and the macro-F1 against the simulator's ground truth. Plain numpy + httpx: no
torch, no edgekit import; any v2 client would do the same.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.predictive_maintenance.data import CLASSES, SPLITS, make_split, model_inputs  # noqa: E402

__all__ = ["InferError", "infer", "v2_request"]


class InferError(Exception):
    """The agent refused or could not be reached (one line for the user)."""


def v2_request(inputs: dict[str, np.ndarray]) -> dict:
    """The v2 JSON body for named float32 inputs (row-major ``data``, explicit ``shape``)."""
    return {"inputs": [{"name": k, "shape": list(v.shape), "datatype": "FP32",
                        "data": np.ascontiguousarray(v, dtype=np.float32).ravel().tolist()}
                       for k, v in inputs.items()]}


def infer(client, url: str, model: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Logits [n, classes] from the agent at ``url`` for a batch of named inputs."""
    import httpx

    try:
        r = client.post(f"{url.rstrip('/')}/v2/models/{model}/infer", json=v2_request(inputs))
    except httpx.HTTPError as exc:
        raise InferError(f"cannot reach the agent at {url}: {exc}") from exc
    if r.status_code != 200:
        try:
            detail = r.json().get("error", r.text)
        except ValueError:
            detail = r.text
        raise InferError(f"{url} answered {r.status_code}: {detail}")
    out = r.json()["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000", help="the agent's base URL")
    ap.add_argument("--model", required=True, help="model name (the bundle name)")
    ap.add_argument("--split", default="field", choices=sorted(SPLITS), help="which simulated set to send")
    ap.add_argument("--windows", type=int, default=60, help="how many windows (spread over the classes)")
    ap.add_argument("--batch", type=int, default=8, help="windows per request")
    args = ap.parse_args(argv)
    if args.windows < 1 or args.batch < 1:
        ap.error("--windows and --batch must be at least 1")
    import httpx

    from examples.predictive_maintenance.model import macro_f1

    ds = make_split(args.split, per_class=max(1, -(-args.windows // len(CLASSES))))
    inputs = model_inputs(ds.x[: args.windows], ds.speed_rpm[: args.windows])
    labels = ds.y[: args.windows]
    logits = []
    try:
        with httpx.Client(timeout=30) as client:
            for i in range(0, len(labels), args.batch):
                logits.append(infer(client, args.url, args.model, {k: v[i : i + args.batch] for k, v in inputs.items()}))
    except InferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    pred = np.concatenate(logits).argmax(1)
    for y, p, rpm in zip(labels[:12], pred[:12], ds.speed_rpm[:12], strict=False):
        print(f"{rpm:7.0f} rpm  truth {CLASSES[y]:11s} predicted {CLASSES[p]}")
    f1 = macro_f1({"logits": np.eye(len(CLASSES))[pred]}, labels)
    print(f"{len(labels)} windows from the {args.split} set: accuracy {(pred == labels).mean():.3f}, macro-F1 {f1:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
