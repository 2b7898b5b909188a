"""What every report shows, derived from results.json once: report.html, report.md and report.json all read this.

Nothing here measures: figures are picked, combined (drop, compression ratio, Pareto front) and labelled.
"""

from __future__ import annotations

LATENCY_KEYS = ("mean", "std", "min", "p50", "p90", "p99", "max")
# An integer file more than this much slower than the float one is named: below it, a few-microsecond model's p50
# moves that much from run to run.
SLOWER_MARGIN = 1.10
# An integer file this many top-1 points below its float twin is named, gate or not: a drop that big (MobileNetV3
# int8 with entropy calibration lost 31.6) must not pass silently in a run without a gate: block.
DROP_WARNING_PP = 1.0


def build_report_data(results: dict) -> dict:
    artifacts = results["artifacts"]
    primary = primary_bench_key(artifacts)
    cards = [_card(a, artifacts, primary) for a in artifacts]
    _mark_pareto(cards)
    return {
        "model": results["recipe"]["name"],
        "created": results["created"],
        "edgepack_version": results["edgepack_version"],
        "reference": artifacts[0]["name"],
        "primary_bench": None if primary is None else {"target": primary[0], "threads": primary[1]},
        "artifacts": cards,
        "robustness": robustness_table(artifacts),
        "layer_sqnr": {a["name"]: a["layer_sqnr"] for a in artifacts if a.get("layer_sqnr")},
        "sparsity": {a["name"]: a["sparsity"] for a in artifacts if a.get("sparsity")},
        "sensitivity": results.get("sensitivity"),
        "mixed_precision": mixed_precision_records(artifacts),
        "range_methods": range_method_records(artifacts),
        "compression": compression_lines(artifacts),
        "slower_than_float": slower_than_float(artifacts),
        "qat_below_ptq": qat_below_ptq(artifacts),
        "accuracy_drops": accuracy_drops(artifacts),
        "gate": results.get("gate"),
        "failure": failure_line(results),
    }


def failure_line(results: dict) -> str | None:
    """A run that failed after loading keeps what it measured: the reports say where it stopped and why."""
    failure = results.get("failure")
    if failure is None:
        return None
    return (f"The run failed in step {failure['step'] or 'unknown'}: {failure['error']}. The figures below are what "
            "was measured before it; there is no manifest.")  # fmt: skip


def slower_than_float(artifacts: list[dict]) -> list[str]:
    """One line per (integer artifact, target, threads) whose p50 is over SLOWER_MARGIN x its float baseline's on
    the same target and threads: int8 that runs slower than float is what a user notices first (FINDINGS.md:
    onnxruntime's default s8s8 QDQ did), and on a tiny model QDQ overhead can outweigh the integer kernels."""
    lines = []
    for artifact in (a for a in artifacts if a["precision"] != "fp32" and a["format"] != "torch"):
        baseline = float_baseline(artifact, artifacts)
        floats = {(r["target"], r["threads"]): r["latency_ms"].get("p50") for r in baseline.get("bench") or []}
        for record in artifact.get("bench") or []:
            ours, theirs = record["latency_ms"].get("p50"), floats.get((record["target"], record["threads"]))
            if ours and theirs and ours > SLOWER_MARGIN * theirs:
                lines.append(f"{artifact['name']} runs {ours / theirs:.2f}x slower than {baseline['name']} on "
                             f"{record['target']} with {record['threads']} thread(s) (p50 {ours:.3g} ms vs "
                             f"{theirs:.3g} ms)")  # fmt: skip
    return lines


def accuracy_drops(artifacts: list[dict]) -> list[str]:
    """One line per integer artifact whose top-1 is more than DROP_WARNING_PP points below its float twin's (the
    float file of its format, else the source), measured on the same evaluation data."""
    lines = []
    for artifact in (a for a in artifacts if a["precision"] != "fp32" and a.get("accuracy")):
        twin = float_baseline(artifact, artifacts)
        ours, theirs = artifact["accuracy"]["top1"], (twin.get("accuracy") or {}).get("top1")
        if theirs is not None and (theirs - ours) * 100 > DROP_WARNING_PP:
            lines.append(f"{artifact['name']} top-1 {ours:.2%} is {(theirs - ours) * 100:.1f} points below "
                         f"{twin['name']} ({theirs:.2%}); try another quantize method or calibration data, and "
                         "add a gate: block (max_accuracy_drop) to fail such a run")  # fmt: skip
    return lines


def qat_below_ptq(artifacts: list[dict]) -> list[str]:
    """One line per QAT model whose int8 file measured below the PTQ file of the model it started from (the qat
    stage's held-out comparison in onnxruntime): QAT must never make a model worse without saying so."""
    lines = []
    for artifact in artifacts:
        vs = (artifact["details"].get("qat") or {}).get("vs_ptq")
        if vs and vs["qat_below_ptq"]:
            lines.append(f"{artifact['name']}: QAT int8 top-1 {vs['qat']['top1']:.2%} is below the PTQ int8 top-1 "
                         f"{vs['ptq']['top1']:.2%} from {artifact['parent']} ({vs['data']}, {vs['qat']['runtime']}); "
                         "quantize without the qat stage, or lower its learning rate")  # fmt: skip
    return lines


def mixed_precision_records(artifacts: list[dict]) -> dict[str, dict]:
    """Artifact name -> the quantize stage's mixed-precision record (accuracy_target), with the file's MACs by
    precision (details.macs), where there is one."""
    return {a["name"]: a["details"]["mixed_precision"] | {"macs": a["details"].get("macs")}
            for a in artifacts if a["details"].get("mixed_precision")}  # fmt: skip


def range_method_records(artifacts: list[dict]) -> dict[str, dict]:
    """Artifact name -> which range method ``method: auto`` chose per activation tensor (details.range_methods,
    calibration/auto_ranges.py), with ``rows`` [tensor, method] for the table and ``bias_correction``, one line on
    whether bias correction auto kept its correction (details.bias_correction_choice), or None."""
    records = {}
    for artifact in artifacts:
        record = artifact["details"].get("range_methods")
        if record and "tensors" in record:
            choice = artifact["details"].get("bias_correction_choice")
            records[artifact["name"]] = record | {"rows": [[t, m] for t, m in record["tensors"].items()],
                                                  "bias_correction": choice and bias_correction_line(choice)}
    return records


def bias_correction_line(choice: dict) -> str:
    """What bias correction auto decided, and on what figures."""
    if "held_out_error" not in choice:
        return f"bias correction off: {choice['why']}"
    errors = choice["held_out_error"]
    return (f"bias correction {'applied' if choice['applied'] else 'left off'} (auto): error to float "
            f"{errors['with']:.4g} with it, {errors['without']:.4g} without, on {choice['measured_on']}")


def mixed_precision_notes(artifacts: list[dict]) -> list[str]:
    """One line per mixed-precision file for the terminal summary: whether it met its target, and its MACs."""
    from edgepack.reports.text import macs_text, mixed_precision_outcome

    records = mixed_precision_records(artifacts)
    return [f"{name} mixed precision: {mixed_precision_outcome(record)}; MACs {macs_text(record['macs'])}"
            for name, record in records.items()]  # fmt: skip


def compression_lines(artifacts: list[dict]) -> list[str]:
    """One line per compression stage's torch model (what it did, in figures), then the gzip sizes of pruned files."""
    lines = [_compression_line(a, artifacts) for a in artifacts if a["format"] == "torch" and a["stage"] != "load"]
    lines += [f"{a['name']}: {a['bytes']:,} B raw, {a['gzip_bytes']:,} B gzip-compressed"
              for a in artifacts if a.get("gzip_bytes")]  # fmt: skip
    return lines


def _compression_line(artifact: dict, artifacts: list[dict]) -> str:
    details, name = artifact["details"], artifact["name"]
    parts = [f"{name} (from {artifact['parent']}): {details.get('parameters', 0):,} parameters"]
    pruning = details.get("pruning") or {}
    if "channels" in pruning:
        c = pruning["channels"]
        parts.append(f"channels removed, params {c['params_before']:,} -> {c['params_after']:,}, "
                     f"MACs {c['macs_before']:,} -> {c['macs_after']:,}")  # fmt: skip
    elif "layers" in pruning:
        fractions = list(pruning["layers"].values())
        parts.append(f"{sum(fractions) / max(len(fractions), 1):.0%} of weights zero over {len(fractions)} layers")
    if "low_rank" in details:
        done = [layer for layer in details["low_rank"]["layers"] if layer["skipped"] is None]
        parts.append(f"{len(done)} layers factorised, {details['low_rank']['params_saved']:,} parameters saved")
    if "qat" in details:
        parts.append(_qat_text(artifact, artifacts))
    finetune = pruning.get("finetune") or (details.get("low_rank") or {}).get("finetune") or details.get("finetune")
    finetune = finetune or (details.get("qat") or {}).get("finetune")
    if finetune:
        teacher = f"distilled from {finetune['teacher']}" if finetune.get("teacher") else "labels only"
        parts.append(f"fine-tuned {finetune['steps']} steps ({teacher})")
    return "; ".join(parts)


def _qat_text(artifact: dict, artifacts: list[dict]) -> str:
    """QAT's promise in figures: the simulated top-1 beside what each integer file measured in its runtime."""
    qat = artifact["details"]["qat"]
    simulated = (qat.get("simulated_accuracy") or {}).get("top1")
    exported = {a["name"]: a["accuracy"]["top1"] for a in artifacts if a.get("accuracy")
                and a["precision"] != "fp32" and _descends(a, artifact["name"], artifacts)}  # fmt: skip
    measured = ", ".join(f"{n} {v:.2%}" for n, v in exported.items())
    packed = int(qat["packed_weight_bytes"])
    head = f"QAT {qat['scheme']['precision']} ({qat['weight_bits']} weights, {packed:,} B packed)"
    simulated_text = f", simulated top-1 {simulated:.2%}" if simulated is not None else ""
    vs = qat.get("vs_ptq")
    ptq_text = f"; held-out int8 top-1 QAT {vs['qat']['top1']:.2%} vs PTQ {vs['ptq']['top1']:.2%}" if vs else ""
    return head + simulated_text + (f" vs measured {measured}" if measured else "") + ptq_text


def _descends(artifact: dict, ancestor: str, artifacts: list[dict]) -> bool:
    by_name = {a["name"]: a for a in artifacts}
    current = artifact
    while current and current.get("parent"):
        if current["parent"] == ancestor:
            return True
        current = by_name.get(current["parent"])
    return False


def primary_bench_key(artifacts: list[dict]) -> tuple[str, int] | None:
    """The (target, threads) every artifact is compared on in one plot: the first benchmark record of the run."""
    for artifact in artifacts:
        for record in artifact.get("bench") or []:
            return record["target"], record["threads"]
    return None


def _card(artifact: dict, artifacts: list[dict], primary: tuple[str, int] | None) -> dict:
    accuracy, reference = artifact.get("accuracy"), artifacts[0].get("accuracy")
    baseline = float_baseline(artifact, artifacts)
    card = {key: artifact[key] for key in ("name", "format", "precision", "path", "sha256", "bytes", "parent")}
    return card | {
        "baseline": baseline["name"],
        "compression": baseline["bytes"] / artifact["bytes"] if artifact["bytes"] else None,
        "top1": accuracy["top1"] if accuracy else None,
        "accuracy_drop_pp": (reference["top1"] - accuracy["top1"]) * 100 if accuracy and reference else None,
        "accuracy_runtime": accuracy["runtime"] if accuracy else None,
        "max_abs_error": _worst_error(artifact.get("verification")),
        "latency": [latency_entry(r) for r in artifact.get("bench") or []],
        "primary_latency": _primary_latency(artifact, primary),
        "pareto": False,
    }


def float_baseline(artifact: dict, artifacts: list[dict]) -> dict:
    """What the size is compared with: the float artifact of the same format (quantization's own saving), else the
    source model."""
    same_format = [a for a in artifacts if a["format"] == artifact["format"] and a["precision"] == "fp32"]
    return same_format[0] if same_format else artifacts[0]


def _worst_error(verification: dict | None) -> float | None:
    if not verification or not verification.get("outputs"):
        return None
    return max(o["max_abs_error"] for o in verification["outputs"])


def latency_entry(record: dict) -> dict:
    energy = record.get("energy") or {}
    proxy, measured = energy.get("proxy") or {}, energy.get("measured") or {}
    return {
        "target": record["target"],
        "threads": record["threads"],
        "runtime": f"{record['runtime']} {record['runtime_version']}",
        **{key: record["latency_ms"].get(key) for key in LATENCY_KEYS},
        "peak_rss_mib": record.get("peak_rss_mib"),
        "energy_proxy_uj": proxy.get("uj_per_inference"),
        "energy_measured_uj": measured.get("uj_per_inference"),
        "energy_measured_method": measured.get("method"),
    }


def _primary_latency(artifact: dict, primary: tuple[str, int] | None) -> dict | None:
    for record in artifact.get("bench") or []:
        if (record["target"], record["threads"]) == primary:
            return latency_entry(record)
    return None


def _mark_pareto(cards: list[dict]) -> None:
    """Pareto front of accuracy (higher is better) against p50 latency (lower is better) on the primary target."""
    points = [c for c in cards if c["top1"] is not None and (c["primary_latency"] or {}).get("p50") is not None]
    for card in points:
        card["pareto"] = not any(_dominates(other, card) for other in points if other is not card)


def _dominates(a: dict, b: dict) -> bool:
    a_lat, b_lat = a["primary_latency"]["p50"], b["primary_latency"]["p50"]
    return a["top1"] >= b["top1"] and a_lat <= b_lat and (a["top1"] > b["top1"] or a_lat < b_lat)


def robustness_table(artifacts: list[dict]) -> dict | None:
    """{"conditions": [{label, kind, value}], "rows": [{artifact, clean, top1: [...], worst_drop_pp}]}; None without
    data. Each row's top1 list follows the conditions' order."""
    measured = [a for a in artifacts if a.get("robustness")]
    if not measured:
        return None
    first = measured[0]["robustness"]
    conditions = [{key: c[key] for key in ("label", "kind", "value")} for c in first["conditions"]]
    labels = [c["label"] for c in conditions]
    rows = [_robustness_row(a["name"], a["robustness"], labels) for a in measured]
    return {"conditions": conditions, "samples": first["samples"], "rows": rows}


def _robustness_row(name: str, record: dict, labels: list[str]) -> dict:
    by_label = {c["label"]: c["top1"] for c in record["conditions"]}
    values = [by_label.get(label) for label in labels]
    present = [v for v in values if v is not None]
    worst = (record["clean_top1"] - min(present)) * 100 if present else None
    return {"artifact": name, "clean": record["clean_top1"], "top1": values, "worst_drop_pp": worst}
