"""The reference notebook's own Keras pipeline, as it was written: the peer `bench --only notebook` measures
PCam Review against. A standalone script for an interpreter with TensorFlow (`requirements-bench.txt`): it
imports nothing from pcam_core, and pcam_core needs no TensorFlow.

What the notebook does, here unchanged:
- ImageDataGenerator(rescale=1/255, validation_split=0.25, rotation_range=20, width_shift_range=0.1,
  height_shift_range=0.1, shear_range=0.2, zoom_range=0.2, horizontal_flip=True, fill_mode="nearest")
- .flow_from_dataframe over train/<id>.tif, batch_size=64, target_size=(96, 96), class_mode="binary";
- its base CNN: 3 x [Conv2D(32/64/128, 3x3, relu) + MaxPooling2D(2)] -> Flatten -> Dense(128, relu) ->
  Dropout(0.5) -> Dense(1, sigmoid); Adam, binary cross-entropy;
- model.fit on the "training" subset for whole epochs; model.predict through a rescale-only generator.

usage: python notebook_keras.py DATA_DIR --epochs N [--predict-dir DIR]
Prints one JSON line: start-up, fit and predict seconds and counts, the AUC of the prediction.
"""

import argparse
import json
import os
import time

started = time.perf_counter()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from tensorflow.keras import layers, models  # noqa: E402
from tensorflow.keras.preprocessing.image import ImageDataGenerator  # noqa: E402


def create_base_model(input_shape=(96, 96, 3)):
    m = models.Sequential([
        layers.Input(input_shape),
        layers.Conv2D(32, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)),
        layers.Conv2D(64, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)),
        layers.Conv2D(128, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)),
        layers.Flatten(), layers.Dense(128, activation="relu"), layers.Dropout(0.5),
        layers.Dense(1, activation="sigmoid")])
    m.compile(optimizer="adam", loss="binary_crossentropy",
              metrics=["accuracy", tf.keras.metrics.AUC(name="auc")])
    return m


def labels_frame(folder):
    df = pd.read_csv(os.path.join(folder, "train_labels.csv"))
    df["id"] = df["id"].astype(str) + ".tif"
    df["label"] = df["label"].astype(str)
    return df


def main():
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--predict-dir", help="a Kaggle-layout folder whose train/ patches are predicted "
                                         "(default: the notebook's 25% validation split)")
    a = p.parse_args()
    df = labels_frame(a.data)
    gen = ImageDataGenerator(rescale=1 / 255, validation_split=0.25, rotation_range=20, width_shift_range=0.1,
                             height_shift_range=0.1, shear_range=0.2, zoom_range=0.2, horizontal_flip=True,
                             fill_mode="nearest")
    train = gen.flow_from_dataframe(df, os.path.join(a.data, "train"), x_col="id", y_col="label",
                                    subset="training", batch_size=64, seed=42, shuffle=True,
                                    class_mode="binary", target_size=(96, 96))
    model = create_base_model()
    setup = time.perf_counter() - started
    t = time.perf_counter()
    model.fit(train, steps_per_epoch=len(train), epochs=a.epochs, verbose=0)
    fit_seconds = time.perf_counter() - t
    if a.predict_dir:
        pdf = labels_frame(a.predict_dir)
        flow = ImageDataGenerator(rescale=1 / 255).flow_from_dataframe(
            pdf, os.path.join(a.predict_dir, "train"), x_col="id", y_col="label", batch_size=64,
            shuffle=False, class_mode="binary", target_size=(96, 96))
    else:
        flow = ImageDataGenerator(rescale=1 / 255, validation_split=0.25).flow_from_dataframe(
            df, os.path.join(a.data, "train"), x_col="id", y_col="label", subset="validation", batch_size=64,
            shuffle=False, class_mode="binary", target_size=(96, 96))
    t = time.perf_counter()
    prob = model.predict(flow, verbose=0).ravel()
    predict_seconds = time.perf_counter() - t
    print(json.dumps({"setup_seconds": setup, "fit_seconds": fit_seconds, "fit_images": train.n * a.epochs,
                      "train_patches": train.n, "predict_seconds": predict_seconds, "predicted": len(prob),
                      "auc": float(roc_auc_score(flow.labels, prob)), "tensorflow": tf.__version__,
                      "total_seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
