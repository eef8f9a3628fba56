"""bot: the ImageNet recipe of "Bag of Tricks for Image Classification with CNNs" (He et al., 2019)."""
