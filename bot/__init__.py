"""bot: the ImageNet recipe of "Bag of Tricks for Image Classification with CNNs" (He et al., 2019).

The package in wings, each importing only the wings below it (tests/test_layers.py checks):

    bot.cli                       the commands: train, ablate, evaluate, predict, export, ...
    bot.grid                      ablation grids and the tables they become
    bot.train  |  bot.export      the training core  |  after training: export, int8, pruning
    bot.artifacts                 what runs write and read back: checkpoints, trained models, ONNX
    bot.models |  bot.data        the networks  |  the two loaders
    bot.config                    the one typed config (its values checked in bot.config_checks)
    bot.errors                    UserError: bad input, one line, exit 2

The public Python API: bot.config.load, bot.models.build_model, bot.models.count_params_macs,
bot.optim.build_optimizer and bot.data.build_loaders.
"""
