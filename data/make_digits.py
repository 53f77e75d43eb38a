"""Train a scikit-learn MLPClassifier on the bundled handwritten digits and export it.

    python data/make_digits.py            # rewrites data/digits.h5 and data/models/digits-mlp/

Writes
    data/models/digits-mlp/config.json, model.safetensors   hpcinfer's MLP format
    data/digits.h5   x (1797, 64) float32 in [0, 1]   the input rows
                     y (1797,) int64                   the true labels
                     sklearn_proba (1797, 10) float64  MLPClassifier.predict_proba(x)
                     (attribute sklearn_accuracy: its accuracy on y)

The generated files are committed, so running the demo needs no scikit-learn; the test
suite also reruns `export_mlp` on a fresh model to check hpcinfer against it.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
from safetensors.numpy import save_file

HERE = Path(__file__).resolve().parent
# Widths deliberately not divisible by 2, 3 or 4: tensor-parallel splits must cope.
HIDDEN = (50, 30)
OUTPUT_ACTIVATION = {"softmax": "softmax", "logistic": "logistic", "identity": "identity"}


def export_mlp(clf, folder: Path, dtype: str = "float32") -> None:
    """Write a fitted MLPClassifier/MLPRegressor in hpcinfer's MLP folder format."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [clf.coefs_[0].shape[0]] + [c.shape[1] for c in clf.coefs_]
    config = {
        "model_type": "mlp",
        "layer_sizes": sizes,
        "activation": clf.activation,
        "output_activation": OUTPUT_ACTIVATION[clf.out_activation_],
        "source": f"scikit-learn {type(clf).__name__}",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tensors = {}
    for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_, strict=True)):
        tensors[f"layers.{i}.weight"] = np.ascontiguousarray(w.T, dtype=dtype)  # (out, in)
        tensors[f"layers.{i}.bias"] = np.ascontiguousarray(b, dtype=dtype)
    save_file(tensors, str(folder / "model.safetensors"))


def train_digits(seed: int = 0):
    """(x, y, fitted classifier): digits scaled to [0, 1], a 64-50-30-10 relu MLP."""
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    clf = MLPClassifier(hidden_layer_sizes=HIDDEN, max_iter=600, random_state=seed)
    # Train on the first 1200 rows; the rest are held out, so accuracy means something.
    clf.fit(x[:1200], y[:1200])
    return x, y, clf


def main() -> None:
    x, y, clf = train_digits()
    export_mlp(clf, HERE / "models" / "digits-mlp")
    proba = clf.predict_proba(x)
    accuracy = float((clf.predict(x) == y).mean())
    with h5py.File(HERE / "digits.h5", "w") as f:
        f.create_dataset("x", data=x)
        f.create_dataset("y", data=y)
        f.create_dataset("sklearn_proba", data=proba)
        f.attrs["sklearn_accuracy"] = accuracy
        f.attrs["source"] = "sklearn.datasets.load_digits, scaled by 1/16; see make_digits.py"
    print(f"digits: {x.shape[0]} rows, MLPClassifier accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
