"""Extraction: everything that runs a model lives here.

Checkpoint + data -> the head's input features (or their statistics) -> a store written through
`io.store`. The trust boundary is `trust` (what a file may have unpickled, imported or run:
nothing without --trust-code), with the two readers that take untrusted archives apart without
running them, `scripted` and `exportaudit` with `exportgraph` (command line trusted, every file
untrusted).

    config       ExtractConfig / ExtractOutcome: what an extraction is asked and answers
    run          run_extract: every checkpoint, end to end
    plan         jobs, store paths, resuming (skip complete stores)
    checkpoint   any checkpoint format -> named tensors, metadata, epoch
    exported     torch.export programs: weights, and the audited runnable module
    exportaudit  the allowlist audit of a torch.export archive (members, payloads, sample inputs)
    exportgraph  the allowlist audit of one program's graph JSON (operators, names, shapes)
    scripted     a TorchScript archive's weights read as data (its code never runs)
    models       the model spec, building and strict loading, the head
    data         data specs -> batches (.npz / .h5 files, CIFAR folders, factories)
    arrays       lazy handles on the arrays of .npz / .npy / HDF5 data files
    device       device, autocast, eval mode borrowed
    forward      the probe that finds the head, and the one forward loop
    writer       the background writer thread
    distributed  torchrun: ranks, the data split, shard outputs
    inspection   `ncinspect inspect`: describe a file (rendered by `render.describe`)
    trust        the trust boundary: --trust-code, user code, pickles
    messages     the wording extraction errors share
"""
