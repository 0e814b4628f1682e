"""Configuration of `spacetime shard`."""

from __future__ import annotations

from dataclasses import dataclass, field

VIDEO_EXTENSIONS = [
    ".mp4",
    ".mov",
    ".m4v",
    ".mkv",
    ".webm",
    ".avi",
    ".ts",
    ".mts",
    ".m2ts",
    ".mpg",
    ".mpeg",
    ".flv",
    ".wmv",
    ".3gp",
    ".ogv",
]
IMAGE_EXTENSIONS = [".jpg", ".jpeg", ".png", ".webp"]  # still images become 1-frame clips


CAMERAS = ("static", "pan", "tilt", "zoom_in", "zoom_out")


@dataclass
class ScoreConfig:
    """What `shard` measures on every clip it keeps (data_pipeline/scores.py)."""

    enabled: bool = True
    """Off: no curation scores (manifest columns stay null; `curate` can then only use `where`)."""

    sample_frames: int = 3
    """Evenly spaced frames per clip for sharpness and the perceptual hash."""
    text_frames: int = 1
    """Frames per clip given to the OCR text detector (0: no text score; ~0.1 s per frame)."""
    text_max_side: int = 640
    """Frames are scaled so their longer side is at most this for text detection."""
    crop_borders: bool = True
    """Detect letterbox/pillarbox bars and crop them away before encoding (the box is recorded)."""
    border_luma: int = 32
    """An 8-bit grey level above which a pixel is picture, not bar."""


@dataclass
class FilterConfig:
    """Thresholds on the stored scores; None or empty: no filter. `shard.filters` rejects clips
    while sharding (into rejected.parquet); `curate.filters` selects among sharded clips."""

    min_flow: float | None = None
    """Mean optical-flow magnitude, in frame widths per second."""
    max_flow: float | None = None
    cameras: list[str] = field(default_factory=list)
    """Camera classes kept (static, pan, tilt, zoom_in, zoom_out); empty: all."""
    max_text: float | None = None
    """Fraction of the frame covered by detected text."""
    min_sharpness: float | None = None
    """Variance of the Laplacian of the luma (higher is sharper)."""
    max_dark: float | None = None
    """Fraction of pixels clipped to black."""
    max_bright: float | None = None
    """Fraction of pixels clipped to white."""

    def validate(self) -> None:
        bad = sorted(set(self.cameras) - set(CAMERAS))
        if bad:
            raise ValueError(f"unknown camera class(es) {bad}; valid: {', '.join(CAMERAS)}")


@dataclass
class ShardConfig:
    """Cutting videos into clips and writing webdataset shards."""

    extensions: list[str] = field(
        default_factory=lambda: list(VIDEO_EXTENSIONS) + list(IMAGE_EXTENSIONS)
    )
    """File suffixes taken from a folder or prefix (case-insensitive); empty: every file."""
    max_input_bytes: int = 20 * 1024**3
    """Inputs larger than this are rejected as too large."""
    max_input_pixels: int = 8192 * 8192
    """Inputs with more pixels per frame than this are rejected as too large."""
    file_timeout_s: float = 600.0
    """Seconds one input may take (checked between frames); past it the input is an error."""
    worker_max_files: int = 500
    """Each Ray worker's decoding child is replaced after this many inputs (0: never)."""
    worker_max_rss_mb: int = 3072
    """...or as soon as its resident memory passes this many MiB after an input (0: no bound)."""

    # Scene detection (PySceneDetect's ContentDetector for hard cuts, brightness for fades).
    cut_threshold: float = 27.0
    """ContentDetector threshold on the HSV frame difference (its default)."""
    min_scene_frames: int = 15
    """Minimum frames between two hard cuts (suppresses flashes)."""
    dark_threshold: float = 12.0
    """Mean 8-bit brightness under which a frame is dark (fade/black); dark frames join no clip."""
    analysis_width: int = 160
    """Width of the small frames used for scene and motion analysis."""

    # Clips.
    min_clip_seconds: float = 1.0
    """Scenes shorter than this yield no clip."""
    max_clip_seconds: float = 10.0
    """Longer scenes are split into consecutive clips of at most this length."""
    min_side: int = 64
    """Clips whose shorter output side would be below this are rejected."""
    min_motion: float = 0.002
    """Clips whose mean absolute frame difference (0-1) is below this are static and dropped."""

    # Output geometry and encoding.
    max_pixels: int = 1280 * 720
    """Pixel budget per output frame; larger clips are downscaled keeping aspect ratio."""
    size_multiple: int = 16
    """Output sides are rounded to a multiple of this (VAE stride x patch size)."""
    crf: int = 18
    """libx264 constant rate factor of the clip encodes (lower is better quality)."""
    x264_preset: str = "veryfast"
    """libx264 speed preset."""

    # Shards.
    shard_max_bytes: int = 1024**3
    """Target shard size; a shard closes before it would exceed this (one clip at least)."""
    shard_max_clips: int = 100_000
    """At most this many clips per shard."""
    num_workers: int = 0
    """Parallel clip tasks; 0: one per CPU of the Ray cluster."""

    # Curation.
    scores: ScoreConfig = field(default_factory=ScoreConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)

    def validate(self) -> None:
        if self.min_clip_seconds <= 0 or self.max_clip_seconds < self.min_clip_seconds:
            raise ValueError(
                "need 0 < min_clip_seconds <= max_clip_seconds, got "
                f"{self.min_clip_seconds} and {self.max_clip_seconds}"
            )
        if self.size_multiple < 2 or self.size_multiple % 2:
            raise ValueError(
                f"size_multiple must be even and >= 2 (H.264 4:2:0), got {self.size_multiple}"
            )
        if self.max_pixels < self.size_multiple**2:
            raise ValueError(f"max_pixels must be at least size_multiple^2, got {self.max_pixels}")
        if self.shard_max_bytes <= 0 or self.shard_max_clips <= 0:
            raise ValueError("shard_max_bytes and shard_max_clips must be positive")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must be in [0, 51], got {self.crf}")
        if self.max_input_bytes < 1 or self.max_input_pixels < 1 or self.num_workers < 0:
            raise ValueError("max_input_bytes and max_input_pixels must be >= 1, num_workers >= 0")
        if not self.file_timeout_s > 0 or self.min_side < 1 or self.analysis_width < 16:
            raise ValueError("file_timeout_s must be > 0, min_side >= 1 and analysis_width >= 16")
        if self.worker_max_files < 0 or self.worker_max_rss_mb < 0:
            raise ValueError("worker_max_files and worker_max_rss_mb must be >= 0 (0: no bound)")
        if self.scores.sample_frames < 1 or self.scores.text_frames < 0:
            raise ValueError("scores.sample_frames must be >= 1 and scores.text_frames >= 0")
        self.filters.validate()


@dataclass
class CurateConfig:
    """`spacetime curate`: a selection from the scores `shard` stored, without re-encoding."""

    filters: FilterConfig = field(default_factory=FilterConfig)
    where: str = ""
    """Optional filter expression over manifest columns (pandas query syntax), e.g.
    "seconds >= 2 and width >= 256 and camera != 'zoom_in'"."""
    dedup: bool = True
    """Drop near-duplicate clips (of different sources), keeping the largest, longest copy."""
    dedup_distance: float = 6.0
    """Two clips are near-duplicates when their frame hashes differ by at most this many of 64
    bits on average (measured on a 256x144 clip: re-encoded or rescaled copies 1.3, cropped 3%
    per side 3.3, 5% per side 8; a static shot and a slow pan over the same picture 10.7)."""

    dedup_partitions: int = 0
    """0: the near-duplicate search runs in this process; N: as a Ray Data group-by over N
    partitions (on --ray-address, or a local Ray), for manifests too big for one machine's time."""

    def validate(self) -> None:
        self.filters.validate()
        if self.dedup_partitions < 0:
            raise ValueError("curate.dedup_partitions must be >= 0")
        if not 0 <= self.dedup_distance <= 64:
            raise ValueError(f"curate.dedup_distance must be in [0, 64], got {self.dedup_distance}")
