"""Forward and search over the whole Ray cluster: exactly once, resumable.

The driver plans the batches of the dataset (RETURNN's batching, one plan for any number of
actors, so the results do not depend on the cluster), and hands the batch ids to a Ray Data
``map_batches`` over a pool of :class:`InferenceActor` (one per GPU, or per CPU worker), which
Ray spreads over the nodes. Each actor loads the model once (the checkpoint travels through the
object store, so nodes need no shared disk for it), reads its batches' seqs itself and returns
the results; the driver writes each batch's result as it arrives to ``<output>.parts/``
(:mod:`returnn_ray.inference.parts`). Ray Data restarts a dead actor and reruns its batch; a
rerun of the command after an interruption skips the batches already written. At the end the
output file is assembled from the parts in plan order, atomically. The run's events (start, end
with seqs/s and, for search, LER/WER) go to its metrics file (:mod:`returnn_ray.metrics`).
"""

# Imports inside functions: Ray and Ray Data load only when inference runs on the cluster (start-up time).
from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import time
from typing import Any, Sequence

import numpy as np
import torch

from returnn_ray.cluster import env
from returnn_ray.cluster.data_context import configure_ray_data
from returnn_ray.cluster.placement import place
from returnn_ray.cluster.ray_internals import user_error_in
from returnn_ray.config import Config, Settings
from returnn_ray.data import BatchingOptions, plan_epoch
from returnn_ray.data.base import Dataset, DataSpec
from returnn_ray.data.batching import filter_by_length
from returnn_ray.data.from_settings import batching_options, data_specs, open_dataset
from returnn_ray.data.hdf import HDFWriter
from returnn_ray.data.ray_data import Batch, pad_batch
from returnn_ray.errors import ConfigError, UserError
from returnn_ray.metrics import MetricsWriter, metrics_path, since_process_start
from returnn_ray.inference.model import (
    check_ctc_output,
    check_inference_model,
    forward_marked,
    forward_outputs,
    search_beams,
)
from returnn_ray.inference.callback import callback_payload, forward_order, load_callback, load_part, run_callback
from returnn_ray.inference.files import batch_digest, changed_file, check_output_file, data_files, file_identity
from returnn_ray.inference.job import ForwardJob
from returnn_ray.inference.parts import DATA_FILES, PartStore, plan_digest, tags_digest
from returnn_ray.inference.progress import Progress
from returnn_ray.model.build import build_model
from returnn_ray.search import edit_distance, labels_to_string, write_search_output
from returnn_ray.training import checkpoints
from returnn_ray.training.preload import check_preload_files, load_weights

MAX_BLOCKS = 4096
"""At most about this many Ray Data blocks (tasks); a block of more batches runs them one after another."""
BATCHES_PER_TASK = 4
"""Planned batches per Ray Data task, where there are enough of them (:func:`task_sizes`)."""


def task_sizes(num_batches: int, num_actors: int) -> list[int]:
    """Batches per Ray Data task, in dispatch order: :data:`BATCHES_PER_TASK` (each task costs Ray
    Data and the driver ~15-20 ms), shrinking to one batch over the last ``4 * num_actors * size``
    batches, so the actors finish together (each holds a running and a queued task: tasks of 4
    left one actor idle for up to half a task's time at the end, a few % of a short run).

    >>> task_sizes(30, 2)
    [4, 4, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1]
    """
    most = max(BATCHES_PER_TASK, -(-num_batches // MAX_BLOCKS))
    sizes, left = [], num_batches
    while left:
        sizes.append(min(most, max(1, -(-left // (4 * num_actors))), left))
        left -= sizes[-1]
    return sizes


def dataset_name(settings: Settings, *, search: bool) -> str:
    """``search_data`` / ``forward_data`` if set, else ``eval`` (RETURNN's choice)."""
    own = "search_data" if search else "forward_data"
    if getattr(settings.data, own) is not None:
        return own
    if settings.data.eval is None:
        raise ConfigError(f"task {'search' if search else 'forward'} needs a dataset: set `eval` (or `{own}`)")
    return "eval"


def run_inference(settings: Settings, config: Config, *, search: bool) -> int:
    """The forward or search task, start to finish; returns the exit code."""
    start = time.monotonic()
    task = "search" if search else "forward"
    name = dataset_name(settings, search=search)
    dataset = open_dataset(settings, name)
    dataset.check_unique_tags(f"the {task} output")
    options = batching_options(settings, name)
    callback = load_callback(settings, search=search)
    order = forward_order(dataset, settings) if callback is not None else dataset.seq_order_for_epoch(1)
    check_every_seq_kept(dataset, order, options, task=task)
    check_inference_model(settings, search=search)
    check_preload_files(settings, training=False)
    specs = data_specs(settings, dataset)
    which = checkpoints.checkpoint_to_load(settings.run.model, settings.run.load_epoch, load=settings.run.load)
    epoch = which.epoch or 1
    files = data_files(dataset)
    out_path = _output_path(settings, search=search, epoch=epoch, inputs=[*(files or []), which.path], callback=callback)
    state, model = _checked_state(settings, specs, which.path, epoch=epoch, search=search)
    metrics = MetricsWriter(metrics_path(settings.run.metrics_file, out_path), task=task)

    plan = plan_epoch(order, dataset.seq_lens, options, 1).for_rank(0)
    plan = [np.asarray(b, dtype=np.int64) for b in plan if len(b)]
    identity = file_identity(files)  # before any seq is read: a later change shows at the end
    store = PartStore(out_path, _manifest(settings, task, which.path, dataset, plan, identity, callback=callback is not None))
    done = store.open()
    if done:
        done -= _parts_of_other_data(store, dataset, plan, done, identity, task=task)
    todo = [i for i in range(len(plan)) if i not in done]
    num_seqs = sum(len(b) for b in plan)
    resumed = sum(len(plan[i]) for i in done)
    if done or store.torn:
        torn = f"; {len(store.torn)} torn part(s) (an OS crash as they were written) deleted, run again" if store.torn else ""
        print(f"returnn-ray: {task}: resuming, {resumed} of {num_seqs} seqs already done ({store.dir}){torn}", flush=True)
    nodes: dict[str, int] = {}
    rate = all_up = None
    if todo:
        nodes, (rate, all_up) = _run_batches(
            settings, config, state, plan, todo, store, dataset, name, search=search, epoch=epoch, metrics=metrics,
            callback=callback is not None,
        )
    else:
        metrics.write("run_start", workers=0, since_start=since_process_start())
    why = changed_file(identity, file_identity(files)) if identity is not None else None
    if why:
        raise UserError(
            f"{task}: {why} during the run, so batches may have read old and new data; rerun the same command:"
            " the finished batches are checked against the data then, and those of other data run again"
        )
    if search:
        scores = _assemble_search(settings, dataset, specs, plan, store, out_path)
    elif callback is not None:
        parts = _parts_in_plan_order(plan, store, load_part)
        run_callback(callback, model, dataset, parts, settings.forward.model_outputs)
        scores, out_path = {}, "forward_callback"
    else:
        scores = _assemble_hdf(settings, dataset, plan, store, out_path)
    store.remove()
    secs = time.monotonic() - start
    ran = num_seqs - resumed
    where = f" on {len(nodes)} node(s)" if nodes else ""
    if nodes and settings.run.log_verbosity >= 4:
        per_node = ", ".join(f"node {node}: {count}" for node, count in sorted(nodes.items()))
        print(f"returnn-ray: {task}: batches per node: {per_node}", flush=True)
    print(
        f"returnn-ray: {task} done: {num_seqs} seqs ({ran} run now{where}, {resumed} resumed) in {secs:.1f} s,"
        f" {ran / max(secs, 1e-9):.1f} seqs/s -> {out_path}{_rates_text(scores)}",
        flush=True,
    )
    metrics.write("inference_end", seqs=num_seqs, run_now=ran, resumed=resumed, nodes=len(nodes), secs=round(secs, 3),
                  seqs_per_s_after_first=rate, seqs_per_s_all_actors=all_up, output=os.path.abspath(out_path), scores=scores)
    return 0


def _manifest(settings: Settings, task: str, checkpoint: str, dataset, plan, identity, *, callback: bool) -> dict:
    """What the parts of a run were made from: a resumed run's parts of anything else are not reused."""
    return {
        "task": task,
        "checkpoint": os.path.abspath(checkpoint),
        "checkpoint_bytes": os.path.getsize(checkpoint),
        "checkpoint_mtime_ns": os.stat(checkpoint).st_mtime_ns,
        "dataset_seqs": dataset.num_seqs,
        "dataset_tags": tags_digest(dataset.seq_tags),
        "plan": plan_digest(plan),
        DATA_FILES: identity,
        **({"forward_callback": True} if callback else {}),
        **({"beam_size": settings.forward.beam_size, "ctc_blank_index": settings.forward.ctc_blank_index}
           if task == "search" else {}),
    }


def _checked_state(settings: Settings, specs, path: str, *, epoch: int, search: bool) -> tuple[dict[str, Any], Any]:
    """The checkpoint's state, checked to fit the config's model (and to give CTC output for search),
    and that model with it loaded (a forward_callback's ``init`` gets it, as in RETURNN)."""
    state = checkpoints.load_checkpoint_file(path)
    model = build_model(settings, specs, epoch=epoch, step=int(state.get("step", 0)))
    try:
        load_weights(settings, model, state, checkpoint_path=path, training=False)  # + preload_from_files, as RETURNN
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"checkpoint {path!r} does not fit the config's model: {first}") from exc
    if search:
        check_ctc_output(settings, model)
    return state, model


def check_every_seq_kept(dataset: Dataset, order: np.ndarray, options: BatchingOptions, *, task: str) -> None:
    """Refuse a forward/search that would leave seqs out: RETURNN's forward asserts that
    ``min_seq_length``/``max_seq_length`` are unset ("we want to keep all source sentences"), and
    ``partition_epoch`` would give one part of the corpus, ``random_sample`` some seqs twice and
    others not at all. Here the length filters (training
    options that many configs set) only stop the run when they would drop a seq."""
    if dataset.order.partition_epoch > 1:
        raise UserError(
            f"{task}: dataset {dataset.name!r} has partition_epoch {dataset.order.partition_epoch}, so {task} would"
            f" see only {len(order)} of its seqs; remove partition_epoch from the {task} dataset"
        )
    keep = getattr(dataset, "keep", None)  # seq_list_filter_file: only the listed seqs
    expected = dataset.num_seqs if keep is None else int(keep.sum())
    unique = len(np.unique(order))
    if unique != len(order) or unique != expected:
        raise UserError(
            f"{task}: seq_ordering {dataset.order.seq_ordering!r} of dataset {dataset.name!r} visits {unique} of its"
            f" {expected} seqs ({len(order) - unique} more than once); {task} needs every seq once: use another"
            " seq_ordering (e.g. 'default' or 'sorted')"
        )
    for key in ("max_seq_length", "min_seq_length"):
        limit = getattr(options, key)
        if limit is None:
            continue
        alone = dataclasses.replace(options, **{"max_seq_length": None, "min_seq_length": None, key: limit})
        dropped = len(order) - len(filter_by_length(order, dataset.seq_lens, alone))
        if dropped:
            raise UserError(
                f"{task}: {key} {limit!r} would drop {dropped} of the {len(order)} seqs of dataset {dataset.name!r};"
                f" {task} keeps every seq (as RETURNN's does): set ++{key} 0 or remove it from the config"
            )


def _parts_of_other_data(store: PartStore, dataset: Dataset, plan, done: set[int], identity, *, task: str) -> set[int]:
    """The finished parts that were computed from other data than the dataset's now: deleted (they
    run again). Only checked when a data file's identity changed since the parts were written, or
    the dataset has no files (it is then read again, batch by batch: see :mod:`~returnn_ray.inference.files`)."""
    why = changed_file(store.previous_data_files, identity)
    if why is None:
        return set()
    stale = {i for i in sorted(done) if store.input_digest(i) != batch_digest(pad_batch(dataset, plan[i]))}
    store.drop(stale)
    store.record_data_files()
    if stale or identity is not None:
        print(
            f"returnn-ray: {task}: {why} since the finished batches were written; checked them against the data:"
            f" {len(stale)} of {len(done)} read other data and run again",
            flush=True,
        )
    return stale


def _output_path(settings: Settings, *, search: bool, epoch: int, inputs: Sequence[str], callback: Any = None) -> str:
    """The output file; with a forward_callback (no file written, as in RETURNN) only where its parts go."""
    f = settings.forward
    if search:
        if not f.search_output_file:
            raise ConfigError("task search needs `search_output_file` (where the hypotheses go)")
        path = f.search_output_file
        check_output_file(path, "search_output_file", inputs)
    else:
        path = f.output_file or f"dump-fwd-epoch{epoch:03d}.hdf"  # RETURNN's default name
        check_output_file(path, "output_file", inputs)
        if os.path.exists(path) and not f.forward_override_hdf_output and callback is None:
            raise UserError(
                f"output_file {path!r} exists; delete it, choose another output_file,"
                " or set forward_override_hdf_output True"
            )
    return path


# -- on the cluster ------------------------------------------------------------------------------


class InferenceActor:
    """One per GPU or CPU worker: loads the model once, then runs planned batches by id."""

    def __init__(self, job: ForwardJob) -> None:
        import ray

        self.settings = job.load_settings()
        self.dataset = open_dataset(self.settings, job.dataset)
        self.specs = data_specs(self.settings, self.dataset)
        self.keys = [k for k in self.specs if k in self.dataset.specs]
        self.plan: list[np.ndarray] = ray.get(job.plan)
        state = ray.get(job.state)
        self.device = torch.device("cuda" if job.use_gpu and torch.cuda.is_available() else "cpu")
        self.epoch, self.search, self.callback = job.epoch, job.search, job.callback
        self.model = build_model(self.settings, self.specs, epoch=self.epoch, step=int(state.get("step", 0)))
        load_weights(self.settings, self.model, state, training=False)
        self.model.to(self.device).eval()
        self.reference = reference_key(self.settings, self.model, self.dataset) if self.search else None
        self.node = ray.get_runtime_context().get_node_id()
        self.actor = ray.get_runtime_context().get_actor_id() or f"pid {os.getpid()}"

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = [int(i) for i in rows["batch_id"]]
        results = [self._run(i) for i in ids]
        payloads = np.empty(len(ids), dtype=object)  # bytes objects, not a fixed-width bytes dtype
        payloads[:] = [payload for payload, _ in results]
        digests = np.empty(len(ids), dtype=object)
        digests[:] = [digest for _, digest in results]
        nodes = np.empty(len(ids), dtype=object)
        nodes[:] = [self.node] * len(ids)
        actors = np.empty(len(ids), dtype=object)
        actors[:] = [self.actor] * len(ids)
        return {"batch_id": np.asarray(ids, dtype=np.int64), "payload": payloads, "digest": digests, "node": nodes,
                "actor": actors}

    def _run(self, batch_id: int) -> tuple[bytes, bytes]:
        """The batch's result, and the digest of the input arrays it was computed from."""
        cols = pad_batch(self.dataset, self.plan[batch_id])
        return self._compute(batch_id, cols), batch_digest(cols)

    def _compute(self, batch_id: int, cols: dict[str, np.ndarray]) -> bytes:
        indices = self.plan[batch_id]
        tags = [self.dataset.seq_tags[int(i)] for i in indices]
        batch = Batch.from_columns(cols, self.keys)
        if self.device.type != "cpu":
            batch = Batch(batch.seq_idx, {k: v.to(self.device) for k, v in batch.data.items()}, batch.lens)
        with torch.no_grad():
            if self.search:
                beams = search_beams(
                    self.settings, self.specs, self.model, batch, epoch=self.epoch,
                    beam_size=self.settings.forward.beam_size, seq_tags=tags,
                )
                return _search_payload(indices, beams, batch, self.reference, self.dataset)
            if self.callback:
                marked, batch_dim = forward_marked(self.settings, self.specs, self.model, batch, epoch=self.epoch, seq_tags=tags)
                return callback_payload(indices, marked, batch_dim)
            outputs = forward_outputs(self.settings, self.specs, self.model, batch, epoch=self.epoch, seq_tags=tags)
            return _forward_payload(indices, outputs)


def reference_key(settings: Settings, model, dataset: Dataset) -> str | None:
    """The data key holding reference transcriptions for WER/LER, if the dataset has it."""
    key = "classes"
    if settings.training.network is not None:
        loss = model.loss_specs.get(model.output_layer_name)
        key = loss.target if loss is not None else key
    return key if key in dataset.specs and dataset.specs[key].sparse else None


def _forward_payload(indices: np.ndarray, outputs: dict[str, tuple[np.ndarray, np.ndarray]]) -> bytes:
    """The batch's outputs, unpadded and concatenated over its seqs, as ``.npz`` bytes."""
    arrays: dict[str, np.ndarray] = {"seq_idx": np.asarray(indices, dtype=np.int64)}
    for name, (values, lens) in outputs.items():
        if len(lens) != len(indices):
            raise UserError(f"model output {name!r} has {len(lens)} seqs, the batch {len(indices)}")
        arrays[f"{name}:lens"] = lens.astype(np.int32)
        arrays[f"{name}:values"] = np.concatenate([values[b, : int(n)] for b, n in enumerate(lens)], axis=0)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _search_payload(indices, beams, batch, reference: str | None, dataset: Dataset) -> bytes:
    """The batch's beams (and, with references, the best hypotheses' label edit counts), as JSON."""
    record: dict[str, Any] = {
        "seq_idx": [int(i) for i in indices],
        "beams": [[[score, list(labels)] for score, labels in beam] for beam in beams],
    }
    if reference is not None:
        refs = batch.data[reference].cpu().numpy()
        lens = batch.lens[reference].cpu().numpy()
        pairs = [(refs[b, : lens[b]].tolist(), list(beams[b][0][1]) if beams[b] else []) for b in range(len(beams))]
        record["label_edits"] = sum(edit_distance(r, h) for r, h in pairs)
        record["label_ref"] = int(lens.sum())
        vocab = dataset.labels.get(reference)
        if vocab:
            words = [(_words(r, vocab), _words(h, vocab)) for r, h in pairs]
            record["word_edits"] = sum(edit_distance(r, h) for r, h in words)
            record["word_ref"] = sum(len(r) for r, _ in words)
    return json.dumps(record).encode("utf-8")


def _words(labels: Sequence[int], vocab: Sequence[str]) -> list[str]:
    """The words of a label sequence: labels joined by spaces, BPE's ``@@ `` continuation merged."""
    return labels_to_string(labels, vocab).replace("@@ ", "").split()


def _run_batches(
    settings, config, state, plan, todo, store: PartStore, dataset, name, *, search: bool, epoch: int, metrics: MetricsWriter,
    callback: bool = False,
) -> tuple[dict[str, int], tuple[float | None, float | None]]:
    """Run the batches ``todo`` on the actor pool, writing each result to ``store`` as it comes;
    returns how many batches ran on each node (by Ray node id), and the seqs/s after the first
    result and after every actor's first (:meth:`Progress.rates`)."""
    import pyarrow as pa
    import ray
    from ray.data import ActorPoolStrategy

    if not settings.run.debug:
        # Ray Data's start/finish notices, and Ray's warning (from C++) that its actor pool's
        # constructor arguments live in the object store: nothing a returnn-ray user can act on.
        env.set_defaults(env.BACKEND_LOG_LEVEL.as_env())
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    task = "search" if search else "forward"
    # Each actor holds a CPU (and a GPU) on one node; room for them is checked: Ray Data would wait forever.
    placement = place(settings.run, per="actor", may_run_here=False, what=f"{task} actors")
    num_actors = placement.num_workers
    configure_ray_data(preserve_order=False)  # results are keyed by batch id, not by arrival
    job = ForwardJob.build(
        settings, config, dataset=name, plan=plan, state=state, placement=placement, epoch=epoch, search=search,
        callback=callback,
    )
    starts = np.cumsum([0, *task_sizes(len(todo), num_actors)])
    # One block per task, as cut. from_blocks reads each block's metadata here; from_arrow would
    # run a Ray task per table for it (a worker process or two started, ~1 s, before the first batch).
    # from_blocks is a DeveloperAPI of Ray Data (ray==2.60.*, pinned); tests/tasks/test_forward.py runs it.
    ids = ray.data.from_blocks([pa.table({"batch_id": todo[a:b]}) for a, b in zip(starts[:-1], starts[1:])])
    results = ids.map_batches(
        InferenceActor,
        fn_constructor_kwargs={"job": job},
        batch_size=1,
        compute=ActorPoolStrategy(size=num_actors),
        num_cpus=placement.bundle["CPU"],
        num_gpus=placement.bundle.get("GPU", 0),
        zero_copy_batch=True,
    )
    print(f"returnn-ray: {task} with {num_actors} actor(s) on Ray ({placement.kind.lower()})", flush=True)
    metrics.write("run_start", workers=num_actors, since_start=since_process_start())
    total = sum(len(plan[i]) for i in todo)
    progress = Progress(task, total=total, verbosity=settings.run.log_verbosity, metrics=metrics, actors=num_actors)
    nodes: dict[str, int] = {}
    try:
        for row in results.iter_rows():
            batch_id = int(row["batch_id"])
            store.put(batch_id, row["payload"], row["digest"])
            nodes[str(row["node"])] = nodes.get(str(row["node"]), 0) + 1
            progress.advance(len(plan[batch_id]), actor=str(row["actor"]))
    except Exception as exc:  # noqa: BLE001 - an actor's UserError (bad model output, ...) as one line
        error = user_error_in(exc)
        if error is None:
            raise
        raise UserError(f"{error} (in a {task} actor; the batches done so far are kept in {store.dir})") from exc
    finally:
        progress.close()
    missing = [i for i in todo if i not in store.done()]
    if missing:
        raise UserError(f"{task}: {len(missing)} batches got no result (first: {missing[0]}); rerun to finish them")
    return nodes, progress.rates()


# -- assembling the output file ------------------------------------------------------------------


def _parts_in_plan_order(plan: Sequence[np.ndarray], store: PartStore, load):
    """Each batch's part, checked to hold exactly the batch's seqs: no seq lost, none twice."""
    for batch_id, indices in enumerate(plan):
        part = load(store.get(batch_id))
        if not np.array_equal(np.asarray(part["seq_idx"], dtype=np.int64), indices):
            raise UserError(f"{store.dir}: part {batch_id} holds other seqs than its batch; delete the directory")
        yield part


def _load_npz(payload: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(payload)) as f:
        return {k: f[k] for k in f.files}


def _assemble_hdf(settings: Settings, dataset: Dataset, plan, store: PartStore, out_path: str) -> dict:
    """The forward outputs in RETURNN's HDF layout: ``output`` as ``inputs``, others as targets."""
    specs = _output_specs(settings, _parts_in_plan_order(plan, store, _load_npz))
    keys = {name: ("data" if name == "output" else name) for name in specs}
    with HDFWriter(out_path, {keys[n]: s for n, s in specs.items()}) as writer:
        for part in _parts_in_plan_order(plan, store, _load_npz):
            offsets = {n: np.concatenate([[0], np.cumsum(part[f"{n}:lens"])]) for n in specs}
            for b, seq in enumerate(part["seq_idx"]):
                values = {}
                for n, spec in specs.items():
                    v = part[f"{n}:values"][offsets[n][b] : offsets[n][b + 1]]
                    values[keys[n]] = v.reshape(len(v), -1) if not spec.sparse else v
                writer.add_seq(dataset.seq_tags[int(seq)], values)
    return {}


def _output_specs(settings: Settings, parts) -> dict[str, DataSpec]:
    """Each output's HDF spec: dense ``[T, dim]``, or sparse ``[T]`` for integer ``[B, T]`` outputs."""
    declared = settings.forward.model_outputs or {}
    shapes: dict[str, tuple] = {}
    dtypes: dict[str, np.dtype] = {}
    max_label: dict[str, int] = {}
    for part in parts:
        for key in part:
            if not key.endswith(":values"):
                continue
            name, values = key[: -len(":values")], part[key]
            shapes[name], dtypes[name] = values.shape[1:], values.dtype
            if values.ndim == 1 and np.issubdtype(values.dtype, np.integer) and len(values):
                max_label[name] = max(max_label.get(name, 0), int(values.max()))
    specs = {}
    for name, shape in shapes.items():
        if not shape and np.issubdtype(dtypes[name], np.integer):
            dim = (declared.get(name) or {}).get("dim") or max_label.get(name, 0) + 1
            specs[name] = DataSpec(int(dim), sparse=True, dtype="int32")
        else:
            specs[name] = DataSpec(int(np.prod(shape)) if shape else 1, dtype=str(dtypes[name]))
    return specs


def _assemble_search(settings: Settings, dataset: Dataset, specs, plan, store: PartStore, out_path: str) -> dict:
    """RETURNN's search output file, seqs in corpus order; returns the LER/WER (:func:`_rates_text`) if there
    were references."""
    vocab_key = "classes" if "classes" in dataset.labels else next(iter(dataset.labels), None)
    vocab = dataset.labels.get(vocab_key) if vocab_key else None
    by_seq: dict[int, list] = {}
    edits = refs = word_edits = words = 0
    have_refs = have_words = False
    for part in _parts_in_plan_order(plan, store, lambda p: json.loads(p)):
        for seq, beam in zip(part["seq_idx"], part["beams"]):
            by_seq[int(seq)] = [(float(score), labels_to_string(labels, vocab)) for score, labels in beam]
        if "label_edits" in part:
            have_refs = True
            edits += part["label_edits"]
            refs += part["label_ref"]
        if "word_edits" in part:
            have_words = True
            word_edits += part["word_edits"]
            words += part["word_ref"]
    f = settings.forward
    entries = [(dataset.seq_tags[i], by_seq[i]) for i in sorted(by_seq)]
    write_search_output(out_path, entries, fmt=f.search_output_file_format, beam=f.search_output_beam)
    if not have_refs:
        return {}
    rates = {"ler": 100.0 * edits / max(refs, 1), "label_edits": edits, "labels": refs}
    if have_words:
        rates.update(wer=100.0 * word_edits / max(words, 1), word_edits=word_edits, words=words)
    return rates


def _rates_text(rates: dict) -> str:
    """The end of the done line: LER and WER in percent, with their counts.

    >>> _rates_text({"ler": 12.5, "label_edits": 5, "labels": 40, "wer": 50.0, "word_edits": 2, "words": 4})
    ', LER 12.50% (5/40 labels), WER 50.00% (2/4 words)'
    """
    text = f", LER {rates['ler']:.2f}% ({rates['label_edits']}/{rates['labels']} labels)" if "ler" in rates else ""
    if "wer" in rates:
        text += f", WER {rates['wer']:.2f}% ({rates['word_edits']}/{rates['words']} words)"
    return text
