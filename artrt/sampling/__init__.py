"""Incremental state for sampling: the cache protocol every model shares (:class:`ARCache`),
one cache per model of :mod:`artrt.models` (``model.new_cache(batch_size, cond)`` makes
it), the key/value cache of the attention decode, and the CUDA graphs of the samplers'
steps (:class:`StepGraphs`)."""

from artrt.sampling.arrnn import ARRNNCache
from artrt.sampling.cache import ARCache
from artrt.sampling.graphs import StepGraphs
from artrt.sampling.kv_cache import KVCache
from artrt.sampling.made import MADECache
from artrt.sampling.multiscale import MultiscalePixelCNNCache
from artrt.sampling.pixelcnn import GatedPixelCNNCache, PixelCNNCache
from artrt.sampling.pixelcnnpp import PixelCNNppCache
from artrt.sampling.transformer import ARTransformerCache
from artrt.sampling.wavenet import WaveNetCache

__all__ = ["ARCache", "ARRNNCache", "ARTransformerCache", "GatedPixelCNNCache", "KVCache",
           "MADECache", "MultiscalePixelCNNCache", "PixelCNNCache", "PixelCNNppCache",
           "StepGraphs", "WaveNetCache"]
