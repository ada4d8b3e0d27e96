"""Run by the interop venv's Python: trains a tiny scikit-learn model for MLServer and writes its model
repository (``<dir>/lr/model.joblib`` + ``model-settings.json``) and MLServer's ``settings.json``.

    python train_lr.py DIR HTTP_PORT GRPC_PORT METRICS_PORT
"""

import json
import sys
from pathlib import Path

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression


def main() -> None:
    root = Path(sys.argv[1])
    http_port, grpc_port, metrics_port = (int(p) for p in sys.argv[2:5])
    rng = np.random.default_rng(7)
    x = rng.normal(size=(400, 4))
    y = (x[:, 0] + 0.5 * x[:, 1] - x[:, 3] > 0).astype(int)
    model = LogisticRegression().fit(x, y)
    (root / "lr").mkdir(parents=True, exist_ok=True)
    joblib.dump(model, root / "lr" / "model.joblib")
    (root / "lr" / "model-settings.json").write_text(json.dumps({
        "name": "lr", "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "v1"}}))
    (root / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port,
        "debug": False, "metrics_dir": str(root / ".metrics")}))  # not the working directory


if __name__ == "__main__":
    main()
