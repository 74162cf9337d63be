"""The soak driver: the real stack under a steady, seeded mix of operations while faults are injected on a
seeded schedule; after the run, the invariant checker judges the clients' records, the exported ledger and
OpenBao's audit log, the files are scanned for key material, and the report is written.

Threads: a dispatcher (one operation every 1/rate seconds to a small pool; an operation that would queue
behind a stalled server is dropped and counted, so the load stays bounded), the fault injector (inject,
heal, probe until a release succeeds), and a monitor (RSS and fds once a second; restarts a process that
died outside a fault, and records it).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kms.domain.transit import KEK_NAME
from kms.openbao.bootstrap import ROLE_NAME
from kms.openbao.vault import TRANSIT_MOUNT
from sovereign.soak.checker import CheckReport, Violation, ViolationKind, check
from sovereign.soak.cores import enable, find_cores, restore
from sovereign.soak.faults import ALL_FAULTS, FaultKind, FaultRecord, Injector, schedule
from sovereign.soak.history import ClientHistory
from sovereign.soak.monitor import Monitor
from sovereign.soak.replicas import ReplicaStack
from sovereign.soak.report import faults_by_kind, markdown, operations, svg, throughput
from sovereign.soak.scan import scan
from sovereign.soak.stack import Stack, is_mounted, unmount
from sovereign.soak.workload import Node, Recorder, Workload

# relative weights of the operations in the mix
MIX: dict[str, float] = {
    "release": 10,
    "release-write": 2,
    "renew": 2,
    "register": 1,
    "seal": 0.5,
    "policy-change": 0.4,
    "export": 0.3,
    "revoke": 0.3,
    "suspend-approve": 0.3,
}


class SoakError(RuntimeError):
    pass


@dataclass(frozen=True)
class SoakConfig:
    minutes: float
    topology: str = "single"
    faults: tuple[FaultKind, ...] = ALL_FAULTS
    seed: int = 1
    out: Path = Path("var/soak")
    rate: float = 8.0  # operations per second
    workers: int = 4
    max_nodes: int = 8
    max_ops: int = 0  # 0: rate x duration
    # seconds a stall, a seal or a full filesystem lasts: longer than the client deadline, so a stall
    # times calls out (the server then grants requests whose client gave up), and long enough for SQLite
    # to need new space (it first reuses what its files hold: the WAL restarts after each checkpoint)
    hold: float = 6.0
    interval: float = 30.0  # seconds between faults once every kind has run
    timeout: float = 5.0  # client RPC deadline
    recovery_limit: float = 60.0  # a fault not recovered within this is a violation
    db_fs_mib: int = 64

    def to_dict(self) -> dict[str, Any]:
        return {
            "minutes": self.minutes, "topology": self.topology, "faults": [str(f) for f in self.faults],
            "seed": self.seed, "out": str(self.out), "rate": self.rate, "workers": self.workers,
            "max_nodes": self.max_nodes, "max_ops": self.max_ops, "hold_s": self.hold,
            "interval_s": self.interval, "client_timeout_s": self.timeout,
            "recovery_limit_s": self.recovery_limit, "db_fs_mib": self.db_fs_mib,
        }  # fmt: skip


@dataclass
class RunState:
    stop: threading.Event = field(default_factory=threading.Event)
    dropped: int = 0
    faults: list[FaultRecord] = field(default_factory=list)
    unexpected_exits: list[dict[str, Any]] = field(default_factory=list)


def _pick(rng: random.Random) -> Callable[[list[Node]], Node | None]:
    def choose(nodes: list[Node]) -> Node | None:
        return rng.choice(nodes) if nodes else None

    return choose


class Run:
    def __init__(self, cfg: SoakConfig, progress: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.say = progress
        self.work = (cfg.out / "work").resolve()  # absolute: each serve runs in a folder of its own
        self.stack: Stack | ReplicaStack = (
            Stack(self.work, cfg.db_fs_mib) if cfg.topology == "single" else ReplicaStack(self.work)
        )
        self.state = RunState()
        self.duration = cfg.minutes * 60

    # -- the whole run

    def execute(self) -> dict[str, Any]:
        cfg = self.cfg
        if cfg.topology not in ("single", "replicas"):
            raise SoakError(f"unknown topology {cfg.topology!r}: single or replicas")
        self._clean()
        started = datetime.now(UTC)
        if cfg.topology == "single":
            self.say(
                f"starting OpenBao (raft), sovereign serve (SQLite on a {cfg.db_fs_mib} MiB tmpfs) under {self.work}"
            )
        else:
            self.say(
                "starting a three-member OpenBao raft cluster, PostgreSQL, and two sovereign serve replicas "
                f"(B in its own network namespace) under {self.work}"
            )
        self.cores = enable()  # serve and OpenBao dump core on a crash where the system lets them
        try:
            return self._execute(started)
        finally:
            restore(self.cores)
            self.stack.close()

    def _execute(self, started: datetime) -> dict[str, Any]:
        cfg = self.cfg
        self.stack.start()
        rec = Recorder()
        wl = Workload(self.stack, rec, timeout=cfg.timeout, max_nodes=cfg.max_nodes)
        injector = Injector(
            self.stack,
            hold=cfg.hold,
            storage_errors=lambda: sum(o.code == "STORAGE_ERROR" for o in list(rec.ops)),
            seed=cfg.seed,
        )
        monitor = Monitor(self._pids())
        try:
            wl.create_keys()
            wl.make_probes()
            for tee in ("snp", "tdx", "snp", "tdx"):
                wl.register(tee)
            rec.started = time.monotonic()
            plan = schedule(
                cfg.faults, self.duration, cfg.seed, warmup=min(6.0, self.duration / 10), tail=min(8.0, self.duration / 8),
                interval=cfg.interval,
            )  # fmt: skip
            self.say(
                f"load at {cfg.rate} ops/s for {self.duration:.0f} s; faults at "
                + ", ".join(f"{t:.0f}s {k}" for t, k in plan)
            )
            threads = [
                threading.Thread(target=self._dispatch, args=(wl,), name="soak-dispatch"),
                threading.Thread(target=self._inject, args=(wl, injector, plan), name="soak-faults"),
                threading.Thread(
                    target=self._watch, args=(monitor, injector, rec), name="soak-monitor", daemon=True
                ),
            ]
            for t in threads:
                t.start()
            threads[0].join()
            threads[1].join(self.duration + 300)
            load_end = rec.now()
            self.state.stop.set()
            self.say("load done; final recovery, export and checks")
            final_ok = self._settle(wl)
            export = self.work / "auditor" / "final-export.jsonl"
            self._final_export(wl, export)
            report = self._check(wl, injector, export)
        finally:
            self.state.stop.set()
            wl.close()
            for i, plane in enumerate(self.stack.planes):
                name = "serve.log" if i == 0 else f"serve-{i}.log"
                (self.work / name).write_text("\n".join(plane.output) + "\n")
            self.stack.stop()
        # the tmpfs is still mounted and PostgreSQL's folder still there: the databases are scanned too
        roots = [cfg.out, *self.stack.scan_roots()]
        key_scan = scan(roots, rec.keys)
        self.cores.found = [str(p) for p in find_cores(roots)]  # scanned above with every other file
        db_bytes = self._db_bytes()
        violations = list(report.violations)
        violations += [
            Violation(ViolationKind.LEDGER_INVALID, f"during the run: {f}") for f in rec.export_failures
        ]
        violations += [replace(v, detail=f"during the run: {v.detail}") for v in rec.midrun_violations]
        violations += monitor.violations() + key_scan.violations()
        for f in self.state.faults:
            if not f.recovered:
                violations.append(
                    Violation(
                        ViolationKind.NOT_RECOVERED,
                        f"{f.kind} at {f.at:.1f}s: {f.error or 'no release succeeded'}",
                    )
                )
        if not final_ok:
            violations.append(
                Violation(ViolationKind.NOT_RECOVERED, "the system did not serve after the load ended")
            )
        for f in self.state.faults:
            end = f.served if f.recovered else load_end
            during = [o for o in rec.ops if f.at <= o.at <= end]
            f.ops_ok, f.ops_failed = sum(o.ok for o in during), sum(not o.ok for o in during)
        checker = report.to_dict()
        del checker["violations"]
        checker["midrun_checks"] = rec.midrun_checks
        results: dict[str, Any] = {
            "config": cfg.to_dict(),
            "started": started.isoformat(),
            "duration_s": round(load_end, 3),
            "operations": operations(rec.ops),
            "dropped_ops": self.state.dropped,
            "faults_planned": [{"at_s": round(t, 3), "kind": str(k)} for t, k in plan],
            "faults": [f.to_dict() for f in self.state.faults],
            "faults_by_kind": faults_by_kind(self.state.faults),
            "fault_windows": [w.to_dict() for w in injector.windows],
            "processes": monitor.report(),
            "nodes": wl.node_counts(),
            "key_scan": key_scan.to_dict(),
            "core_dumps": self.cores.to_dict(),
            "db_bytes": db_bytes,
            "invariants": {
                "violations_total": len(violations),
                "violations": [v.to_dict() for v in violations],
                "checker": checker,
            },
            "unexpected_exits": self.state.unexpected_exits,
            "throughput": throughput([o for o in rec.ops if o.at >= 0], load_end),
        }
        self._write(results)
        return results

    def _clean(self) -> None:
        plane = self.work / "plane"
        if plane.exists() and is_mounted(plane):
            unmount(plane)
        if self.work.exists():
            shutil.rmtree(self.work)
        self.cfg.out.mkdir(parents=True, exist_ok=True)

    def _pids(self) -> dict[str, Callable[[], int | None]]:
        stack = self.stack
        pids: dict[str, Callable[[], int | None]] = {"driver": os.getpid}
        if isinstance(stack, Stack):
            server = stack.bao.server
            pids["serve"] = stack.serve_pid
            pids["openbao"] = lambda: server.pid if server.running else None
            return pids
        for i in range(stack.replicas):
            pids[f"serve-{'ab'[i]}"] = lambda i=i: stack.serve_pid(i)  # type: ignore[misc]
        for node in stack.cluster.nodes:
            pids[f"openbao-{node.node_id}"] = lambda n=node: n.pid if n.running else None  # type: ignore[misc]
        pids["postgres"] = stack.pg_pid
        return pids

    def _db_bytes(self) -> int:
        stack = self.stack
        if isinstance(stack, Stack):
            return sum(p.stat().st_size for p in stack.plane_dir.glob("sovereign.db*"))
        try:
            rows = stack.pg.execute(
                "SELECT pg_database_size(current_database())", stack.db_url.rsplit("/", 1)[1]
            )
            return int(rows[0][0])
        except Exception:  # PostgreSQL already gone: the size is a figure for the report, not a check
            return -1

    # -- threads

    def _dispatch(self, wl: Workload) -> None:
        cfg, rec = self.cfg, wl.rec
        rng = random.Random(cfg.seed)  # noqa: S311 (a reproducible schedule, not a secret)
        names, weights = list(MIX), list(MIX.values())
        limit = cfg.max_ops or int(cfg.rate * self.duration) + 1
        inflight = threading.Semaphore(cfg.workers * 2)
        sent = 0
        with ThreadPoolExecutor(cfg.workers, thread_name_prefix="soak-op") as pool:
            next_at = time.monotonic()
            while rec.now() < self.duration and sent < limit:
                name = rng.choices(names, weights)[0]
                op = self._operation(wl, name, random.Random(rng.random()))  # noqa: S311
                if inflight.acquire(blocking=False):
                    sent += 1

                    def done(_: object, release: Callable[[], None] = inflight.release) -> None:
                        release()

                    pool.submit(op).add_done_callback(done)
                else:
                    self.state.dropped += 1
                next_at += 1 / cfg.rate
                time.sleep(max(0.0, next_at - time.monotonic()))

    def _operation(self, wl: Workload, name: str, rng: random.Random) -> Callable[[], None]:
        pick = _pick(rng)
        seal_dir = self.work / "owner"
        ops: dict[str, Callable[[], object]] = {
            "release": lambda: wl.release_random(pick, rng.choice(["dataset/train", "model/main"]), "read"),
            "release-write": lambda: wl.release_random(pick, "model/main", "write"),
            "renew": wl.renew_oldest,
            "register": lambda: wl.register(rng.choice(["snp", "tdx"])) or wl.renew_oldest(),
            "seal": lambda: wl.seal(seal_dir),
            "policy-change": wl.change_policy,
            "export": lambda: wl.export(self.work / "auditor" / "export.jsonl"),
            "revoke": lambda: wl.revoke(pick) if len(wl.live()) > 2 else wl.renew_oldest(),
            "suspend-approve": lambda: (
                wl.suspend_and_approve(pick) if len(wl.live()) > 2 else wl.renew_oldest()
            ),
        }
        fn = ops[name]

        def run() -> None:
            try:
                fn()
            except Exception as exc:  # an operation the workload did not expect to fail: count it, go on
                wl.rec.op(name, wl.rec.now(), f"DRIVER_{type(exc).__name__}")

        return run

    def _inject(self, wl: Workload, injector: Injector, plan: list[tuple[float, FaultKind]]) -> None:
        rec = wl.rec
        for at, kind in plan:
            while rec.now() < at and not self.state.stop.is_set():
                time.sleep(0.05)
            if self.state.stop.is_set():
                return
            record = FaultRecord(kind, rec.now())
            self.say(f"{record.at:6.1f}s fault {kind}")
            replica = 0
            with injector.lock:
                try:
                    replica = injector.inject(kind)
                except Exception as exc:
                    record.error = f"{type(exc).__name__}: {str(exc)[:300]}"
            record.healed = rec.now()
            deadline = record.healed + self.cfg.recovery_limit
            attempts = 0
            while rec.now() < deadline:
                if wl.probe_release(replica):
                    record.served = rec.now()
                    break
                attempts += 1
                if attempts % 5 == 0:  # whatever the refusal, re-attest now and then
                    wl.renew_probe(replica)
                time.sleep(0.2)
            self.state.faults.append(record)
            self.say(
                f"{rec.now():6.1f}s   {kind}: serving again after {record.recovery}s (outage {record.outage}s)"
            )

    def _watch(self, monitor: Monitor, injector: Injector, rec: Any) -> None:
        while not self.state.stop.wait(1.0):
            monitor.tick(rec.now())
            if not injector.lock.acquire(blocking=False):
                continue
            try:
                self._restart_dead(rec)
            finally:
                injector.lock.release()

    def _restart_dead(self, rec: Any) -> None:
        for i, plane in enumerate(self.stack.planes):
            proc = plane.proc
            if proc is not None and proc.poll() is not None:
                tail = plane.output[-15:]
                self.state.unexpected_exits.append(
                    {
                        "process": f"serve-{i}",
                        "at_s": round(rec.now(), 3),
                        "code": proc.returncode,
                        "tail": tail,
                    }
                )
                self.say(
                    f"{rec.now():6.1f}s serve {i} exited ({proc.returncode}) outside a fault; restarting"
                )
                plane.start(timeout=90)
        stack = self.stack
        servers = [stack.bao.server] if isinstance(stack, Stack) else list(stack.cluster.nodes)
        for server in servers:
            if not server.running:
                self.state.unexpected_exits.append({"process": "openbao", "at_s": round(rec.now(), 3)})
                server.start()
        if isinstance(stack, ReplicaStack) and stack.pg_pid() is None:
            self.state.unexpected_exits.append({"process": "postgres", "at_s": round(rec.now(), 3)})
            stack.pg_start()

    # -- after the load

    def _settle(self, wl: Workload) -> bool:
        deadline = time.monotonic() + self.cfg.recovery_limit
        pending = set(range(self.stack.replicas))
        while time.monotonic() < deadline:
            pending = {i for i in pending if not wl.probe_release(i)}
            if not pending:
                return True
            time.sleep(0.3)
        return False

    def _final_export(self, wl: Workload, path: Path) -> None:
        """Export until two exports a checkpoint interval apart agree: every entry is then covered."""
        last = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(1.2)
            size = wl.export(path, op="final-export")
            if size is not None and size == last:
                return
            last = size
        raise SoakError("the final export did not settle within 60 s")

    def _check(self, wl: Workload, injector: Injector, export: Path) -> CheckReport:
        history = ClientHistory(wl.rec.received, wl.rec.refusals, injector.windows)
        return check(
            history,
            export.read_bytes().splitlines(keepends=True),
            wl.audit_keys(),
            self.stack.bao_audit_lines(),
            role_name=ROLE_NAME,
            decrypt_path=f"{TRANSIT_MOUNT}/decrypt/{KEK_NAME}",
        )

    def _write(self, results: dict[str, Any]) -> None:
        out = self.cfg.out
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        title = f"soak {self.cfg.topology}, seed {self.cfg.seed}: operations per second, faults shaded"
        (out / "throughput.svg").write_text(svg(results["throughput"], self.state.faults, title))
        (out / "summary.md").write_text(markdown(results))


def run(cfg: SoakConfig, progress: Callable[[str], None] = print) -> dict[str, Any]:
    return Run(cfg, progress).execute()
