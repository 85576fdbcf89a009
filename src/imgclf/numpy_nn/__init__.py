"""A neural network written from scratch in NumPy: layers, activations, losses, optimizers, backprop,
training and a gradient checker. No torch here; the tests compare every gradient with PyTorch autograd.

GELU is the tanh approximation (PyTorch's `nn.GELU(approximate="tanh")`).
"""

from imgclf.numpy_nn.activations import GELU, LeakyReLU, ReLU, Sigmoid, Tanh
from imgclf.numpy_nn.gradcheck import (
    CheckResult,
    check_layer,
    check_loss,
    check_model,
    numerical_gradient,
    relative_error,
    standard_checks,
)
from imgclf.numpy_nn.init import he_normal, xavier_uniform
from imgclf.numpy_nn.layers import (
    BatchNorm1d,
    BatchNorm2d,
    Conv2D,
    Dropout,
    Flatten,
    Layer,
    Linear,
    MaxPool2D,
    Parameter,
    col2im,
    im2col,
)
from imgclf.numpy_nn.losses import Loss, MSELoss, SoftmaxCrossEntropy, log_softmax
from imgclf.numpy_nn.model import Sequential, build_cnn, build_mlp, read_meta
from imgclf.numpy_nn.optimizers import SGD, Adam, Optimizer
from imgclf.numpy_nn.train import (
    FitResult,
    batches,
    constant_schedule,
    cosine_schedule,
    evaluate,
    fit,
    make_schedule,
    predict_logits,
    step_schedule,
)

__all__ = [
    "GELU", "LeakyReLU", "ReLU", "Sigmoid", "Tanh",
    "CheckResult", "check_layer", "check_loss", "check_model", "numerical_gradient", "relative_error",
    "standard_checks",
    "he_normal", "xavier_uniform",
    "BatchNorm1d", "BatchNorm2d", "Conv2D", "Dropout", "Flatten", "Layer", "Linear", "MaxPool2D", "Parameter",
    "col2im", "im2col",
    "Loss", "MSELoss", "SoftmaxCrossEntropy", "log_softmax",
    "Sequential", "build_cnn", "build_mlp", "read_meta",
    "SGD", "Adam", "Optimizer",
    "FitResult", "batches", "constant_schedule", "cosine_schedule", "evaluate", "fit", "make_schedule",
    "predict_logits", "step_schedule",
]
