"""Plain-torch forecaster: the quantile LSTM, its features, training, calibration and the
predictor that Serve and ``prae backtest`` share. No Ray import anywhere in here.

    module.py       QuantileLSTM (the nn.Module) and ModelConfig
    median_head.py  MedianHead: per resource, an MLP forecasting the median from the
                    window's summary statistics; served in place of the LSTM's q0.5
    median_fit.py   training the median head
    features.py     raw windows -> scale-free features; model space <-> raw units
    training.py     TrainingWindows, windows_from_series, split_newest, concat_windows, fit
    promotion.py    champion/challenger: a retrained model is served only if it beats the
                    serving one on the newest rows, held out of its training
    predictor.py    Predictor: load/builtin/save/predict
    checkpoint.py   the checkpoint file format (atomic save, validated load)
    calibration.py  ConformalCalibrator / CalibrationBank: online per-workload intervals
    combination.py  MedianSelector: per workload, the model's median, the last value and
                    the seasonal candidates, weighted by their recent errors
    seasonal.py     the seasonal candidates: one period (found by autocorrelation), a day
                    and a week before the target
    tails.py        TailChoice: per workload, the model's tail, an anchor (the last
                    value; cpu's hour peak) plus the workload's own recent changes, and
                    its own recent values, weighted by their recent losses
"""

from prae.model.calibration import CalibrationBank, ConformalCalibrator
from prae.model.combination import MedianSelector
from prae.model.median_head import MedianHead, MedianHeadConfig
from prae.model.module import ModelConfig, QuantileLSTM
from prae.model.predictor import Predictor, builtin_checkpoint_path
from prae.model.training import TrainingWindows, concat_windows, fit, windows_from_series

__all__ = [
    "CalibrationBank",
    "ConformalCalibrator",
    "MedianHead",
    "MedianHeadConfig",
    "MedianSelector",
    "ModelConfig",
    "Predictor",
    "QuantileLSTM",
    "TrainingWindows",
    "builtin_checkpoint_path",
    "concat_windows",
    "fit",
    "windows_from_series",
]
