"""CTR data: feature spec, readers, synthetic generator, preprocessing cache, data module."""

from rankitect.data.cache import PreprocessCache, default_cache_dir
from rankitect.data.datamodule import BatchIndexSampler, CTRDataModule, SplitBatches
from rankitect.data.errors import DataFileNotFoundError, DataFormatError
from rankitect.data.readers import CategoricalCSVReader, CriteoReader
from rankitect.data.source import CTRData, CTRSource, CTRSplit
from rankitect.data.spec import FeatureSpec
from rankitect.data.streaming import CriteoStream, StreamingCriteoDataset, StreamingCTRDataModule
from rankitect.data.synthetic import SyntheticCTR, normalized_entropy

__all__ = [
    "BatchIndexSampler",
    "CTRData",
    "CTRDataModule",
    "CTRSource",
    "CTRSplit",
    "CategoricalCSVReader",
    "CriteoStream",
    "CriteoReader",
    "DataFileNotFoundError",
    "DataFormatError",
    "FeatureSpec",
    "PreprocessCache",
    "SplitBatches",
    "StreamingCTRDataModule",
    "StreamingCriteoDataset",
    "SyntheticCTR",
    "default_cache_dir",
    "normalized_entropy",
]
