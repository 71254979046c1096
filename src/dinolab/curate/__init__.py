"""Data curation as in DINOv2's LVD-142M (and DINOv3's balancing): embed an uncurated pool, remove
near-duplicates and images too close to evaluation sets, retrieve what is near a curated seed set, balance
by hierarchical k-means. The stages are functions of L2-normalized float32 arrays (in memory, memory-mapped,
or `Rows` of either, read a block of rows at a time); `curate` runs them on image folders and writes a file
list and a report.
"""

from dinolab.curate.balance import balanced_quotas, balanced_sample, hierarchical_kmeans
from dinolab.curate.dedup import Dedup, deduplicate, duplicate_pairs, too_close
from dinolab.curate.pipeline import CurateReport, CurateSettings, curate
from dinolab.curate.retrieve import retrieve_clusters, retrieve_per_image
from dinolab.curate.search import Rows, kmeans, knn, knn_blocks, normalized

__all__ = [
    "CurateReport",
    "CurateSettings",
    "Dedup",
    "Rows",
    "balanced_quotas",
    "balanced_sample",
    "curate",
    "deduplicate",
    "duplicate_pairs",
    "hierarchical_kmeans",
    "kmeans",
    "knn",
    "knn_blocks",
    "normalized",
    "retrieve_clusters",
    "retrieve_per_image",
    "too_close",
]
