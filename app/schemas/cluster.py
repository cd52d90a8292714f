from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ClusterRequest(BaseModel):
    """Cluster either a list of texts or (a filtered part of) a collection."""
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"texts": ["The rocket launched", "NASA's shuttle mission", "Is there a god?",
                   "Arguments for atheism"], "algorithm": "kmeans", "k": 2, "seed": 0},
        {"collection": "news", "filter": {"lang": "en"}, "algorithm": "hdbscan",
         "min_cluster_size": 5},
    ]})

    texts: list[str] | None = Field(None, description="texts to cluster (members are indices)")
    collection: str | None = Field(None, description="cluster a collection's stored vectors "
                                   "(members are document ids); always a background job")
    filter: dict[str, Any] | None = Field(None, description="metadata filter (collections only)")
    model: str | None = Field(None, description="encoder for `texts` (default: the default model)")
    algorithm: Literal["kmeans", "agglomerative", "community", "hdbscan"] = "kmeans"
    k: int | None = Field(None, ge=2, description="kmeans/agglomerative: number of clusters; "
                          "kmeans without k picks the best silhouette in k_min..k_max")
    k_min: int = Field(2, ge=2, le=100)
    k_max: int = Field(10, ge=2, le=100)
    distance_threshold: float = Field(0.75, gt=0.0, le=2.0,
                                      description="agglomerative (no k): cosine distance at "
                                      "which average-linkage merging stops")
    threshold: float = Field(0.65, ge=-1.0, le=1.0,
                             description="community: cosine similarity for two texts to be neighbours")
    min_community_size: int = Field(3, ge=1, le=100_000)
    min_cluster_size: int = Field(5, ge=2, le=100_000, description="hdbscan")
    min_samples: int | None = Field(None, ge=1, le=100_000, description="hdbscan (default: "
                                    "min_cluster_size)")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="same seed + same input = same result")
    n_keywords: int = Field(8, ge=0, le=50)
    n_representatives: int = Field(3, ge=0, le=50)
    background: bool | None = Field(None, description="run as a job (202 + job id); default: "
                                    "yes for collections and for more than 1000 texts")

    @model_validator(mode="after")
    def _one_source(self) -> "ClusterRequest":
        if (self.texts is None) == (self.collection is None):
            raise ValueError("give either texts or collection")
        if self.filter is not None and self.collection is None:
            raise ValueError("filter only applies to a collection")
        if self.k_min > self.k_max:
            raise ValueError("k_min must not exceed k_max")
        return self


class ClusterOut(BaseModel):
    id: int
    label: str
    keywords: list[str]
    size: int
    members: list[int] | list[str] = Field(description="indices into texts, or document ids")
    representatives: list[str] = Field(description="texts nearest the cluster centroid")


class ClusterResponse(BaseModel):
    clusters: list[ClusterOut]
    outliers: list[int] | list[str] = Field(description="members of no cluster (community, hdbscan)")
    silhouette: float | None = Field(description="mean cosine silhouette of the clustered points "
                                     "(null with fewer than 2 clusters)")


class JobAccepted(BaseModel):
    job_id: str
    status: str
