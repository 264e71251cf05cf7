"""The machine a run uses: which torch device (:mod:`~scarkids.compute.device`), the process
group of a multi-process run (:mod:`~scarkids.compute.distributed`), and handing freed memory
back to the operating system (:mod:`~scarkids.compute.memory`).

Nothing here knows the model or the training loop; the loop, the model and the command line
import it. Import the submodules themselves (``from scarkids.compute import distributed``).
"""
