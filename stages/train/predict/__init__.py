"""Running a trained student after training: on a cache's frames (`evaluate`), on a user's images (`predict`), and
out of PyTorch (`export`).

- inference.py: the one inference path (whole image or sliding window, scales, flips → averaged softmax);
- deployed.py: the deployed student (eval mode, logits only) and its sidecar (`DeploymentInfo`);
- runtime.py: PyTorch and onnxruntime behind one call signature;
- predictor.py: plain RGB images in, label maps out;
- export.py: ONNX / TorchScript export, checked in the target runtime.
"""

from .deployed import DeployedStudent, DeploymentInfo, load_student
from .inference import InferenceConfig, predict_probabilities
from .predictor import Prediction, PredictOptions, Predictor

__all__ = ["DeployedStudent", "DeploymentInfo", "InferenceConfig", "PredictOptions", "Prediction", "Predictor",
           "load_student", "predict_probabilities"]
