"""Datasets, seq orders and batch plans.

Importing this package needs only numpy and h5py (no torch, no Ray), so data unit tests stay fast.
"""

from returnn_ray.data.base import DataSpec, Dataset, OrderOptions
from returnn_ray.data.batching import BatchingOptions, BatchPlan, plan_epoch
from returnn_ray.data.datasets import (
    DATASET_CLASSES,
    DummyDataset,
    StaticDataset,
    Task12AXDataset,
    init_dataset,
)
from returnn_ray.data.extern_data import check_extern_data, extern_data_from_config
from returnn_ray.data.hdf import HDFDataset, HDFWriter, write_hdf
from returnn_ray.data.meta import MetaDataset
from returnn_ray.data.returnn_generic import ReturnnDataset
from returnn_ray.data.seq_list import SeqListFilteredDataset
from returnn_ray.data.seq_order import seq_order_for_epoch, validate_seq_ordering

__all__ = [
    "DATASET_CLASSES",
    "BatchPlan",
    "BatchingOptions",
    "DataSpec",
    "Dataset",
    "DummyDataset",
    "HDFDataset",
    "HDFWriter",
    "MetaDataset",
    "OrderOptions",
    "ReturnnDataset",
    "SeqListFilteredDataset",
    "StaticDataset",
    "Task12AXDataset",
    "check_extern_data",
    "extern_data_from_config",
    "init_dataset",
    "plan_epoch",
    "seq_order_for_epoch",
    "validate_seq_ordering",
    "write_hdf",
]
