"""Latency of a draft-tree round: the roofline of the target forward (``roofline``), the
device table and probe (``devices``), offline calibration from a measured sweep
(``calibration``), online correction (``online``) and the round table for build_tree
(``table``)."""

from .calibration import Calibration, VerifyGrid, fit_roofline, measure_verify_grid, rmse
from .devices import DEVICES, DeviceSpec, measure_device
from .model_spec import ModelSpec
from .online import OnlineCorrection, RoundTimer
from .roofline import RooflineModel
from .table import LatencyModel

__all__ = [
    "DEVICES",
    "Calibration",
    "DeviceSpec",
    "LatencyModel",
    "ModelSpec",
    "OnlineCorrection",
    "RooflineModel",
    "RoundTimer",
    "VerifyGrid",
    "fit_roofline",
    "measure_device",
    "measure_verify_grid",
    "rmse",
]
