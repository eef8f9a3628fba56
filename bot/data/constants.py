"""The paper's augmentation constants (section 2; PAPER.md section 1), in the 0-255 scale."""

MEAN = (123.68, 116.779, 103.939)  # RGB, step 6
STD = (58.393, 57.12, 57.375)

# AlexNet PCA lighting (step 5): eigenvalues and eigenvectors of the ImageNet RGB
# covariance. Rows of EIGVEC are R, G, B; columns are the components.
EIGVAL = (55.46, 4.794, 1.148)
EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)

# The grey of a pixel in colour jitter (saturation blends with it, contrast with its mean):
# ITU-R 601 luma, as torchvision's rgb_to_grayscale and gluon-cv's jitter.
GREY = (0.299, 0.587, 0.114)
