"""Where the commands listen and what they accept unless told otherwise: one home for the CLI and the modules.

The Makefile passes a value only when one is given (PORT=, HOST=), so these are the defaults everywhere.
"""

HOST = "127.0.0.1"  # every server listens on loopback unless told otherwise
UI_PORT = 5000  # MLflow's own default for `mlflow ui`
SERVE_PORT = 8501  # TensorFlow Serving's REST port, as the original served on
TRACKING_SERVER_PORT = 5001  # 5000 is the UI's
TRACKING_SERVER_WORKERS = 2
MAX_BODY_MB = 16  # request bodies over this get HTTP 413: about 30 images of 180x180 as JSON
BATCH_WINDOW_MS = 2.0  # serve: requests arriving within this share one model call (0: each its own)
MAX_BATCH = 32  # serve: images in one shared model call at most
PREDICT_THRESHOLD = 0.5  # a class counts from this probability
PREDICT_BATCH = 64  # images per model call
SAMPLE_OUT = "data/raw"
# Images with more pixels are refused as decompression bombs (Pillow's own default) by predict and serve,
# which read no project config; conf/data's max_image_pixels says the same for prepare (tests/test_config.py).
MAX_IMAGE_PIXELS = 89_478_485
