"""Constants shared by the tools, the deployment code and the benchmarks."""

# torchvision.datasets.folder.IMG_EXTENSIONS, which anomalib's Folder datamodule matches case-insensitively.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# anomalib.data.datasets.image.mvtecad.IMG_EXTENSIONS: the only suffixes MVTecAD reads (case-sensitive).
MVTEC_EXTENSIONS = (".png", ".PNG")
# PIL modes whose values can exceed 255: anomalib's read_image (PIL's convert("RGB")) clips them.
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
