"""The paper's experiments and figures, each one command (`python launch.py COMMAND --help`).

  relu-tanh      Figure 1: the four-layer CNN with ReLU and with tanh, speed-up to a target error
  ablate         LRN on/off and overlapping vs non-overlapping pooling, mean +- std over seeds
  kernels        Figure 3: the first layer's kernels of a trained run, one block per tower
  features       the fc7 vectors of a split, to .npy
  neighbours     Figure 4: query images and their nearest training images in fc7 space
  augment-sheet  the training pipeline's crops, mirrors and lighting for a few images
  curves         loss and top-1/top-5 error vs step (train.py also writes it at every evaluation)

Plots use matplotlib's Agg canvas directly (no pyplot, no display). Nothing here imports
TensorFlow: data comes through alexnet_jax.data.
"""
