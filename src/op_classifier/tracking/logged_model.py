"""The code MLflow logs as op-classifier's served model (MLflow's models from code): nothing is pickled.

Loading the logged pyfunc runs this file, which names the wrapper class by import: the model folder holds
no python_model.pkl that CloudPickle would run. (MLflow warned about that pickle on every `make run`.)
"""

from mlflow.models import set_model

from op_classifier.tracking.served import PixelClassifier

set_model(PixelClassifier())
