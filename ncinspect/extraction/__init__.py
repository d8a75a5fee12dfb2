"""Extraction: everything that runs a model lives here.

Checkpoint + data -> the head's input features (or their statistics) -> a store written through
`io.store`. The trust boundary is `trust`: the only module that decides whether something a file
names may be unpickled, imported or executed (command line trusted, every file untrusted).

    config       ExtractConfig / ExtractOutcome: what an extraction is asked and answers
    run          run_extract: every checkpoint, end to end
    plan         jobs, store paths, resuming (skip complete stores)
    checkpoint   any checkpoint format -> named tensors, metadata, epoch
    exported     torch.export programs: weights, and the audited runnable module
    models       the model spec, building and strict loading, the head
    data         data specs -> batches (.npz / .h5 files, CIFAR folders, factories)
    arrays       lazy handles on the arrays of .npz / .npy / HDF5 data files
    device       device, autocast, eval mode borrowed
    forward      the probe that finds the head, and the one forward loop
    writer       the background writer thread
    distributed  torchrun: ranks, the data split, shard outputs
    inspection   `ncinspect inspect`: describe a file (rendered by `render.describe`)
    trust        the trust boundary
    messages     the wording extraction errors share
"""
