"""Constants shared by the tools, the deployment code and the benchmarks."""

# torchvision.datasets.folder.IMG_EXTENSIONS, which anomalib's Folder datamodule matches case-insensitively.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# anomalib.data.datasets.image.mvtecad.IMG_EXTENSIONS: the only suffixes MVTecAD reads (case-sensitive).
MVTEC_EXTENSIONS = (".png", ".PNG")
