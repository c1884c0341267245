"""PCam Review core library: data, models, training, inference, Grad-CAM, metrics, submissions."""
