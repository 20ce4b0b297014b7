"""The medseg-xdp command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from medseg_xdp import config as config_mod
from medseg_xdp.config import ConfigError
from medseg_xdp.loader import LoaderError

log = logging.getLogger("medseg_xdp")


class CliError(Exception):
    """Printed as one line, exit code 1: no traceback for expected failures."""


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise CliError(f"{what} needs root (BPF and network namespaces)")


def cmd_trace(args: argparse.Namespace) -> int:
    from medseg_xdp.capture import read_capture
    from medseg_xdp.trace import Tracer, parse_hex

    cfg = config_mod.load(args.config)
    frames = [frame for _, frame in read_capture(args.pcap)] if args.pcap else [parse_hex(h) for h in args.hex]
    if args.ingress and args.ingress not in cfg.ports:
        raise CliError(f"--ingress {args.ingress}: not a port in the config's bridge.ports ({', '.join(cfg.ports) or 'none'})")
    _need_root("trace")
    class_of = pinned = None
    if args.state_dir:  # the daemon's inventory: devices land in class-based segments as they do live
        _state_dir_exists(args.state_dir)
        from medseg_xdp.classify import Classifier, load_catalog
        from medseg_xdp.inventory import Inventory, InventoryStore

        inventory = Inventory(Classifier(load_catalog()))
        problem = InventoryStore(args.state_dir).load(inventory)
        if problem:
            raise CliError(problem)
        class_of, pinned = inventory.placement_classes(), inventory.live_pins(cfg)
    with Tracer(cfg, class_of=class_of, pinned=pinned) as tracer:
        for number, frame in enumerate(frames, 1):
            try:
                result = tracer.trace(frame, args.ingress)
            except OSError as exc:
                # e.g. a frame larger than a page, which a test run cannot take
                line = {"packet": number, "error": str(exc)}
                print(json.dumps(line) if args.json else f"#{number}: error: {exc}")
                continue
            if args.json:
                print(json.dumps({"packet": number, **result.as_dict()}))
            else:
                print(
                    f"#{number}: {result.verdict:<5} reason={result.reason} rule={result.rule} "
                    f"{result.src_segment} -> {result.dst_segment} sample={result.sample}"
                    + (f" [{','.join(result.flags)}]" if result.flags else "")
                )
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from medseg_xdp.audit import AuditLog, caller_uid
    from medseg_xdp.breakglass import describe as describe_restored
    from medseg_xdp.breakglass import restore as restore_break_glass
    from medseg_xdp.dataplane import Dataplane
    from medseg_xdp.loader import Loader
    from medseg_xdp.policy_image import compile_policy

    _need_root("load")
    cfg = config_mod.load(args.config)
    ports = args.ports or list(cfg.ports)
    if not ports:
        raise CliError("no ports: list them in bridge.ports or give --ports")
    loader = Loader(cfg.bridge, sizes=cfg.tables)
    loader.preflight(ports, netns_name=args.netns, replace=args.replace)
    loader.compile()
    ifindex = _ifindexes(ports, args.netns)
    with Dataplane(loader.pin_dir) as dataplane:
        fresh = dataplane.active_generation() == 0
        gen = dataplane.apply(lambda g: compile_policy(cfg, g, ifindex.__getitem__).contents)
        state_dir = cfg.daemon.state_dir
        restored = restore_break_glass(dataplane, state_dir, AuditLog(state_dir), cfg.bridge, caller_uid()) if fresh else None  # before attaching
    if restored is not None:
        print(f"medseg-xdp: warning: {describe_restored(restored)}", file=sys.stderr)
    for attachment in loader.attach(ports, netns_name=args.netns, replace=args.replace, force_generic=args.generic):
        print(f"{attachment.ifname}: {attachment.mode} XDP, program id {attachment.prog_id}")
    print(f"policy generation {gen}; pinned state in {loader.pin_dir}")
    return 0


def cmd_unload(args: argparse.Namespace) -> int:
    from medseg_xdp.loader import Loader, detach

    _need_root("unload")
    cfg = config_mod.load(args.config)
    ports = args.ports or list(cfg.ports)
    try:
        for ifname in detach(ports, netns_name=args.netns):
            print(f"{ifname}: detached")
    except LoaderError as exc:
        if not args.remove_state:
            raise
        print(f"medseg-xdp: {exc}", file=sys.stderr)
    if args.remove_state:
        Loader(cfg.bridge, sizes=cfg.tables).remove_pinned_state(args.netns)
        print("pinned state removed")
    return 0


def _ifindexes(ports: Sequence[str], netns_name: str | None) -> dict[str, int]:
    from pyroute2 import IPRoute

    from medseg_xdp.loader import in_netns

    with in_netns(netns_name), IPRoute() as ipr:
        result = {}
        for port in ports:
            found = ipr.link_lookup(ifname=port)
            if not found:
                raise CliError(f"no interface {port}" + (f" in netns {netns_name}" if netns_name else ""))
            result[port] = found[0]
        return result


DEFAULT_STATE_DIR = Path("/var/lib/medseg-xdp")


def cmd_classify(args: argparse.Namespace) -> int:
    from medseg_xdp.xray import Xray, xray_capture

    cfg = config_mod.load(args.config) if args.config else config_mod.Config()
    xray = Xray.default()
    packets = xray_capture(args.pcap, cfg, xray)
    if args.json:
        print(xray.inventory.to_json())
    else:
        print(f"{packets} packets, {xray.samples} sampled, {len(xray.inventory.devices)} devices")
        _print_devices(xray.inventory.summaries())
    failures = sum(xray.registry.failures.values())
    if failures:
        print(f"medseg-xdp: {failures} parser failures (counted, samples dropped): {dict(xray.registry.failures)}", file=sys.stderr)
    return 0


def _state_dir_exists(state_dir: Path) -> None:
    """An empty answer from a directory that is not there would read as "nothing happened"."""
    if not state_dir.is_dir():
        raise CliError(f"no medseg-xdp state at {state_dir}: pass --state-dir (the config's [daemon] state_dir)")


def cmd_devices(args: argparse.Namespace) -> int:
    from medseg_xdp.classify import Classifier, load_catalog
    from medseg_xdp.control import ControlError, request
    from medseg_xdp.daemon import control_socket
    from medseg_xdp.inventory import Inventory, InventoryStore, summaries_csv, summaries_json

    try:
        summaries = request(control_socket(args.state_dir), "devices")
    except ControlError:
        _state_dir_exists(args.state_dir)
        inventory = Inventory(Classifier(load_catalog()))  # no daemon: what it saved last
        problem = InventoryStore(args.state_dir).load(inventory)
        if problem:
            print(f"medseg-xdp: {problem}", file=sys.stderr)
        summaries = inventory.summaries()
    if args.json:
        print(summaries_json(summaries))
    elif args.csv:
        print(summaries_csv(summaries), end="")
    else:
        _print_devices(summaries)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from medseg_xdp.daemon import Daemon, StartRefused, watchdog_interval
    from medseg_xdp.events import Severity

    _need_root("run")
    daemon = Daemon(args.config, netns=args.netns, watchdog_s=watchdog_interval(os.environ))
    try:
        daemon.start()
    except StartRefused as exc:
        daemon.events.emit("start-refused", Severity.critical, str(exc).splitlines()[0], detail=" | ".join(str(exc).splitlines()[1:]))
        daemon.events.close()
        raise CliError(str(exc)) from exc
    daemon.install_signal_handlers()
    daemon.run_forever()
    return 0


def _daemon_request(args: argparse.Namespace, op: str, **arguments: object) -> object:
    from medseg_xdp.control import ControlError, request
    from medseg_xdp.daemon import control_socket

    try:
        return request(control_socket(args.state_dir), op, **arguments)
    except ControlError as exc:
        raise CliError(str(exc)) from exc


def cmd_status(args: argparse.Namespace) -> int:
    status = _daemon_request(args, "status")
    print(json.dumps(status, indent=2))
    return 0


def cmd_drops(args: argparse.Namespace) -> int:
    rows = _daemon_request(args, "drops", match=args.match, last=args.last)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no drop or audit recorded" + (f" for {args.match}" if args.match else "") + " since the daemon started")
        return 0
    print(f"{'time':<19} {'verdict':<7} {'proto':<6} {'source':<30} {'destination':<30} {'segments':<30} {'rule':<24} reason")
    for row in rows:  # type: ignore[attr-defined]
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["time"]))
        source = _endpoint(row["src_ip"], row["sport"], row["src_mac"])
        destination = _endpoint(row["dst_ip"], row["dport"], row["dst_mac"])
        segments = f"{row['src_segment']}->{row['dst_segment']}"
        print(f"{when:<19} {row['verdict']:<7} {row['proto']:<6} {source:<30} {destination:<30} {segments:<30} {row['rule']:<24} {row['reason']}")
    return 0


def _endpoint(ip: str, port: int, mac: str) -> str:
    address = (f"[{ip}]" if ":" in ip else ip) if ip else mac
    return f"{address}:{port}" if port else address


def cmd_flows(args: argparse.Namespace) -> int:
    rows = _daemon_request(args, "flows", top=args.top)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'initiator':<24} {'responder':<24} {'proto':>5} {'segments':<28} {'verdict':<7} {'rule':<20} {'packets':>9} {'bytes':>11}")
    for row in rows:  # type: ignore[attr-defined]
        segments = f"{row['src_segment']}->{row['dst_segment']}"
        print(f"{row['initiator']:<24} {row['responder']:<24} {row['proto']:>5} {segments:<28} {row['verdict']:<7} {row['rule']:<20} {row['packets']:>9} {row['bytes']:>11}")
    return 0


def cmd_pin(args: argparse.Namespace) -> int:
    device = _daemon_request(args, "pin", mac=args.mac.lower(), reason=args.reason, **{"class": args.device_class, "segment": args.segment})
    print(json.dumps(device, indent=2))
    return 0


def cmd_policy_check(args: argparse.Namespace) -> int:
    from medseg_xdp.policy_image import compile_policy

    cfg = config_mod.load(args.file)
    compiled = compile_policy(cfg, 1, lambda port: 0)
    for warning in compiled.warnings:
        print(f"{args.file}: warning: {warning}")
    print(f"{args.file}: valid: {len(cfg.segments)} segments, {len(cfg.rules)} rules, {len(cfg.pins)} pins")
    return 0


EXIT_SIMULATION_DROPS = 3
EXIT_SIMULATION_CUTS_LIFE_CRITICAL = 4
EXIT_SIMULATION_NO_EVIDENCE = 5


def _learned(args: argparse.Namespace, cfg: config_mod.Config) -> tuple[object, object]:
    """(baseline, inventory) from a capture, or from a state directory."""
    from medseg_xdp.baseline import Baseline, BaselineStore, learn_from_capture
    from medseg_xdp.classify import Classifier, load_catalog
    from medseg_xdp.inventory import Inventory, InventoryStore

    if args.pcap:
        xray, baseline = learn_from_capture(args.pcap, cfg)
        return baseline.regrouped(xray.inventory), xray.inventory
    inventory = Inventory(Classifier(load_catalog()))
    baseline = Baseline(cfg.daemon.learning_days, config=cfg)
    for problem in (InventoryStore(args.state_dir).load(inventory), BaselineStore(args.state_dir).load(baseline)):
        if problem:
            print(f"medseg-xdp: {problem}", file=sys.stderr)
    return baseline.regrouped(inventory), inventory


def cmd_policy_propose(args: argparse.Namespace) -> int:
    from medseg_xdp.classify import load_catalog
    from medseg_xdp.propose import propose

    cfg = config_mod.load(args.config) if args.config else config_mod.Config()
    baseline, inventory = _learned(args, cfg)
    text = propose(baseline, inventory, load_catalog(), min_flows=args.min_flows)  # type: ignore[arg-type]
    if args.output:
        args.output.write_text(text)
        print(f"proposed policy written to {args.output}: review it, then `medseg-xdp policy simulate {args.output}`")
    else:
        print(text, end="")
    return 0


def cmd_policy_simulate(args: argparse.Namespace) -> int:
    from medseg_xdp.classify import load_catalog
    from medseg_xdp.simulate import simulate

    candidate = config_mod.load(args.file)
    baseline, inventory = _learned(args, candidate)
    report = simulate(candidate, baseline, inventory, load_catalog())  # type: ignore[arg-type]
    print(report.to_json() if args.json else report.to_text())
    if report.cuts_life_critical:
        return EXIT_SIMULATION_CUTS_LIFE_CRITICAL
    if report.no_evidence:
        return EXIT_SIMULATION_NO_EVIDENCE
    return 0 if report.clean else EXIT_SIMULATION_DROPS


def cmd_policy_diff(args: argparse.Namespace) -> int:
    lines = _daemon_request(args, "policy_diff", path=str(args.file.resolve()) if args.file else None)
    print("\n".join(lines) if lines else "no changes")  # type: ignore[arg-type]
    return 0


def _duration(text: str) -> float:
    """'90', '90s', '5m', '1h' -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        return float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 5m, 1h") from None


def cmd_policy_apply(args: argparse.Namespace) -> int:
    print(f"applying {args.file or 'the daemon config'} ...", flush=True)
    record = _daemon_request(
        args, "policy_apply", path=str(args.file.resolve()) if args.file else None, confirm_within=args.confirm_within, reason=args.reason
    )
    print(f"policy generation {record['generation']} in force; applied in {record['duration_ms']:.1f} ms for {record['devices']} devices")  # type: ignore[index]
    if args.confirm_within:
        print(f"it reverts in {args.confirm_within:g} s unless confirmed: medseg-xdp policy confirm")
    if record.get("restart_loads"):  # type: ignore[union-attr]
        print(f"note: a restart of the daemon loads {record['restart_loads']} again, not {args.file}: "  # type: ignore[index]
              "copy the applied file there to keep it across restarts and reboots")
    return 0


def cmd_policy_confirm(args: argparse.Namespace) -> int:
    _daemon_request(args, "policy_confirm", reason=args.reason)
    print("confirmed: the policy stays")
    return 0


def _print_devices(devices: list[dict[str, object]]) -> None:
    print(f"{'MAC':<17}  {'IP':<15}  {'vendor':<24}  {'class':<20} {'conf':>4}  key evidence")
    for device in devices:
        ips = device["ips"] or ["-"]  # type: ignore[operator]
        evidence = device["evidence"][:2]  # type: ignore[index]
        why = "; ".join(f"{e['signal']}={e['value']}" for e in evidence) or "-"
        vendor = str(device["vendor"] or "-")[:24]
        print(f"{device['mac']:<17}  {ips[0]:<15}  {vendor:<24}  {device['class']:<20} {device['confidence']:>4.2f}  {why}")  # type: ignore[index]


def cmd_break_glass(args: argparse.Namespace) -> int:
    """Works on the pinned maps directly: with the daemon down too."""
    from medseg_xdp.audit import AuditLog, caller_uid
    from medseg_xdp.bpfsys import BpfError
    from medseg_xdp.breakglass import switch
    from medseg_xdp.dataplane import Dataplane
    from medseg_xdp.events import EventExporter
    from medseg_xdp.loader import Loader

    _need_root("break-glass")
    cfg = config_mod.load(args.config)
    pin_dir = Loader(cfg.bridge, sizes=cfg.tables).pin_dir
    try:
        dataplane = Dataplane(pin_dir)
    except BpfError as exc:
        raise CliError(f"no pinned state for bridge {cfg.bridge} at {pin_dir}: is medseg-xdp loaded? ({exc.strerror})") from exc
    on = args.state == "on"
    state_dir = args.state_dir or cfg.daemon.state_dir
    events = EventExporter.from_settings(cfg.events)
    try:
        with dataplane:
            entry = switch(dataplane, on, state_dir, AuditLog(state_dir, events), cfg.bridge, caller_uid(), args.reason)
    finally:
        events.close()
    for (destination, why), count in events.counters.dropped.items():
        print(f"medseg-xdp: warning: the break-glass event did not reach {destination} ({why}, {count}); it is in the audit log", file=sys.stderr)
    if on:
        print(f"BREAK-GLASS ON for bridge {cfg.bridge}: every segment in monitor mode, nothing is dropped by policy; counting goes on.")
        print("End it with: medseg-xdp break-glass off --reason ...")
    else:
        print(f"break-glass off for bridge {cfg.bridge}: the segments' own modes are in force again.")
    print(f"audit: {entry.line()}")
    return 0


def cmd_events_test(args: argparse.Namespace) -> int:
    """Commissioning a SIEM: one test event to every [events] destination, and whether it arrived."""
    from medseg_xdp.events import EventExporter, Severity

    cfg = config_mod.load(args.config)
    if not cfg.events.enabled:
        raise CliError(f"{args.config}: [events] sets no destination (syslog or json_lines)")
    events = EventExporter.from_settings(cfg.events)
    events.emit("test", Severity.notice, f"medseg-xdp test event for bridge {cfg.bridge}", bridge=cfg.bridge, note=args.note)
    events.close(timeout=args.timeout)
    failed = False
    for destination in events.destinations:
        if events.counters.sent[destination]:
            print(f"{destination}: delivered")
        else:
            failed = True
            tries = events.counters.failures[destination]
            print(f"{destination}: NOT delivered within {args.timeout:g} s ({tries} failed attempts; the log says why)")
    return 1 if failed else 0


def cmd_audit(args: argparse.Namespace) -> int:
    import datetime

    from medseg_xdp.audit import AuditLog

    since = datetime.datetime.fromisoformat(args.since).timestamp() if args.since else 0.0
    _state_dir_exists(args.state_dir)
    for entry in AuditLog(args.state_dir).entries(since):
        print(json.dumps(entry.__dict__, sort_keys=True) if args.json else entry.line())
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from medseg_xdp.doctor import Status, run_checks

    cfg = config_mod.load(args.config)
    checks = run_checks(cfg, netns=args.netns)
    for check in checks:
        print(check.line())
    failed = [c for c in checks if c.status is Status.FAIL]
    warned = [c for c in checks if c.status is Status.WARN]
    print(f"{len(checks)} checks: {len(failed)} failed, {len(warned)} warnings")
    return 1 if failed else 0


def cmd_import_assets(args: argparse.Namespace) -> int:
    """Through the running daemon; with none running, into its state directory."""
    from medseg_xdp.assets import import_assets, parse_assets
    from medseg_xdp.audit import AuditLog, caller_uid
    from medseg_xdp.classify import Classifier, load_catalog
    from medseg_xdp.control import ControlError, request
    from medseg_xdp.daemon import control_socket
    from medseg_xdp.inventory import Inventory, InventoryStore

    text = args.file.read_text()
    try:
        result = request(control_socket(args.state_dir), "import_assets", csv=text, source=str(args.file), reason=args.reason)
        imported, disagreements = result["imported"], result["disagreements"]
    except ControlError as exc:
        if "no medseg-xdp daemon" not in str(exc):
            raise CliError(str(exc)) from exc
        inventory = Inventory(Classifier(load_catalog()))
        store = InventoryStore(args.state_dir)
        problem = store.load(inventory)
        if problem:
            print(f"medseg-xdp: {problem}", file=sys.stderr)
        assets = parse_assets(text, set(inventory.classifier.catalog.classes), str(args.file))
        disagreements = [d.line() for d in import_assets(inventory, assets)]
        store.save(inventory)
        imported = len(assets)
        AuditLog(args.state_dir).append("asset import", caller_uid(), args.reason, {"source": str(args.file), "devices": imported, "disagreements": disagreements})
    print(f"{imported} devices imported and pinned with their class")
    for line in disagreements:
        print(f"  disagreement (reported, not applied): {line}")
    return 0


def cmd_exception(args: argparse.Namespace) -> int:
    import uuid

    if args.action == "list":
        for line in _daemon_request(args, "exception_list"):  # type: ignore[attr-defined]
            print(line)
        return 0
    if args.action == "remove":
        print(_daemon_request(args, "exception_remove", id=args.id, reason=args.reason)["removed"])  # type: ignore[index]
        return 0
    if not args.expires:
        raise CliError("an exception needs --expires (e.g. 2h): exceptions never last forever")
    if args.mac:
        if not args.segment or args.src or args.dst:
            raise CliError("a device exception is --mac MAC --segment SEGMENT")
        fields: dict[str, object] = {"mac": args.mac.lower(), "segment": args.segment}
    else:
        if not (args.src and args.dst and args.proto):
            raise CliError("a flow exception is --from SEGMENT --to SEGMENT --proto PROTO [--ports P ...]")
        proto = config_mod.PROTOCOLS.get(args.proto, int(args.proto) if args.proto.isdigit() else None)
        if proto is None:
            raise CliError(f"--proto {args.proto}: one of {', '.join(config_mod.PROTOCOLS)} or a number")
        fields = {"src": args.src, "dst": args.dst, "proto": proto, "ports": [_port_range(p) for p in args.ports or []]}
    result = _daemon_request(args, "exception_add", id=args.id or uuid.uuid4().hex[:8], expires_in=args.expires, reason=args.reason, **fields)
    print(result["exception"])  # type: ignore[index]
    return 0


def _port_range(text: str) -> tuple[int, int]:
    """'443' -> (443, 443), '11000-11999' -> (11000, 11999), as the config reads them."""
    try:
        return config_mod.port_range(text)
    except ValueError:
        raise CliError(f"--ports {text}: a port or a range low-high, 0..65535") from None


def cmd_demo(args: argparse.Namespace) -> int:
    from medseg_xdp.demo import run_demo

    _need_root("demo")
    if not args.verbose:
        logging.getLogger("medseg_xdp").setLevel(logging.WARNING)  # the demo tells its own story
    return run_demo(keep_running=args.keep_running, json_report=args.json_report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medseg-xdp", description="Micro-segmentation for hospital networks, enforced by XDP.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    trace = sub.add_parser("trace", help="run packets through the real kernel program and explain each verdict")
    trace.add_argument("-c", "--config", type=Path, required=True)
    trace.add_argument("--state-dir", type=Path, help="the daemon's state: its inventory places devices in class-based segments and pins")
    source = trace.add_mutually_exclusive_group(required=True)
    source.add_argument("--pcap", type=Path, help="a pcap or pcapng file of Ethernet frames")
    source.add_argument("--hex", nargs="+", help="frames as hex strings")
    trace.add_argument("--ingress", help="bridge port the frames arrive on (default: none)")
    trace.add_argument("--json", action="store_true", help="one JSON object per packet")
    trace.set_defaults(func=cmd_trace)

    for name, func, text in (("load", cmd_load, "compile, apply the config, attach to the ports"), ("unload", cmd_unload, "detach from the ports")):
        p = sub.add_parser(name, help=text)
        p.add_argument("-c", "--config", type=Path, required=True)
        p.add_argument("--ports", nargs="+", help="interfaces (default: bridge.ports)")
        p.add_argument("--netns", help="network namespace the ports live in")
        p.set_defaults(func=func)
        if name == "load":
            p.add_argument("--replace", action="store_true", help="swap an attached xdp_medseg atomically")
            p.add_argument("--generic", action="store_true", help="generic (skb) XDP even where native works")
        else:
            p.add_argument("--remove-state", action="store_true", help="also delete the pinned maps")

    classify = sub.add_parser("classify", help="the X-ray offline: devices and classes from a capture (no root)")
    classify.add_argument("--pcap", type=Path, required=True, help="a capture from a SPAN port or tcpdump (Ethernet)")
    classify.add_argument("-c", "--config", type=Path, help="sampling settings and segments (default: built-in)")
    classify.add_argument("--json", action="store_true", help='one JSON document: {"devices": [...]}')
    classify.set_defaults(func=cmd_classify)

    devices = sub.add_parser("devices", help="the device inventory of a state directory")
    devices.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    output = devices.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true")
    output.add_argument("--csv", action="store_true")
    devices.set_defaults(func=cmd_devices)

    run = sub.add_parser("run", help="the daemon: attach, learn, classify, enforce")
    run.add_argument("-c", "--config", type=Path, required=True)
    run.add_argument("--netns", help="network namespace the bridge ports live in")
    run.set_defaults(func=cmd_run)

    for name, func, text in (("status", cmd_status, "the running daemon's state"), ("flows", cmd_flows, "the largest flows in the kernel's table"),
                             ("drops", cmd_drops, "recent drops and audits (denied flows have no flow entry): who, what, which rule")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
        p.set_defaults(func=func)
        if name == "flows":
            p.add_argument("--top", type=int, default=20)
            p.add_argument("--json", action="store_true")
        if name == "drops":
            p.add_argument("match", nargs="?", help="only records where a MAC, an IP address, a segment or the rule is this")
            p.add_argument("--last", type=int, default=50, help="the newest N records (default 50; the daemon keeps 1,000)")
            p.add_argument("--json", action="store_true")

    pin = sub.add_parser("pin", help="pin a device's class and/or segment (never changed automatically)")
    pin.add_argument("mac")
    pin.add_argument("--class", dest="device_class")
    pin.add_argument("--segment")
    pin.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    pin.add_argument("--reason", default="", help="why: goes into the audit log")
    pin.set_defaults(func=cmd_pin)

    policy = sub.add_parser("policy", help="check, diff and apply policy")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    check = policy_sub.add_parser("check", help="validate a policy file (exit 0 when valid)")
    check.add_argument("file", type=Path)
    check.set_defaults(func=cmd_policy_check)
    propose_parser = policy_sub.add_parser("propose", help="a least-privilege policy from what was learned, for review")
    simulate_parser = policy_sub.add_parser("simulate", help="what FILE would drop of the learned flows (exit 0 clean, 3 drops, 4 cuts a life-critical device, 5 nothing to replay)")
    simulate_parser.add_argument("file", type=Path)
    simulate_parser.add_argument("--json", action="store_true")
    simulate_parser.set_defaults(func=cmd_policy_simulate)
    propose_parser.add_argument("-c", "--config", type=Path, help="sampling settings and learning window (default: built-in)")
    propose_parser.add_argument("-o", "--output", type=Path)
    propose_parser.add_argument("--min-flows", type=int, default=1)
    propose_parser.set_defaults(func=cmd_policy_propose)
    for learning in (propose_parser, simulate_parser):
        source = learning.add_mutually_exclusive_group()
        source.add_argument("--pcap", type=Path, help="learn from a capture instead of the daemon's state")
        source.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    for name, func, text in (("diff", cmd_policy_diff, "what applying FILE would change"), ("apply", cmd_policy_apply, "apply FILE (default: reload the daemon's config)")):
        p = policy_sub.add_parser(name, help=text)
        p.add_argument("file", type=Path, nargs="?")
        p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
        p.set_defaults(func=func)
        if name == "apply":
            p.add_argument("--confirm-within", type=_duration, help="revert automatically unless `policy confirm` comes within this time (e.g. 5m)")
            p.add_argument("--reason", default="", help="why: goes into the audit log")
    confirm = policy_sub.add_parser("confirm", help="keep the policy applied with --confirm-within")
    confirm.add_argument("--reason", default="")
    confirm.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    confirm.set_defaults(func=cmd_policy_confirm)

    glass = sub.add_parser("break-glass", help="every segment to monitor mode at once (and back), on the pinned maps")
    glass.add_argument("state", choices=("on", "off"))
    glass.add_argument("--reason", required=True, help="why: goes into the audit log")
    glass.add_argument("-c", "--config", type=Path, required=True)
    glass.add_argument("--state-dir", type=Path, help="audit log directory (default: the config's daemon.state_dir)")
    glass.set_defaults(func=cmd_break_glass)

    events = sub.add_parser("events-test", help="send one test event to every [events] destination (SIEM commissioning)")
    events.add_argument("-c", "--config", type=Path, required=True)
    events.add_argument("--note", default="", help="a text to find the event by in the SIEM")
    events.add_argument("--timeout", type=float, default=5.0)
    events.set_defaults(func=cmd_events_test)

    audit = sub.add_parser("audit", help="the change audit trail")
    audit.add_argument("--since", help="ISO 8601 date or time")
    audit.add_argument("--json", action="store_true")
    audit.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    audit.set_defaults(func=cmd_audit)

    doctor = sub.add_parser("doctor", help="can this host enforce, and does it, as configured? (exit 1 on a failure)")
    doctor.add_argument("-c", "--config", type=Path, required=True)
    doctor.add_argument("--netns", help="network namespace the bridge ports live in")
    doctor.set_defaults(func=cmd_doctor)

    assets = sub.add_parser("import-assets", help="pin devices from a CMDB / biomedical asset CSV (mac, class, ip, model, location, owner)")
    assets.add_argument("file", type=Path)
    assets.add_argument("--reason", default="", help="why: goes into the audit log")
    assets.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    assets.set_defaults(func=cmd_import_assets)

    exception = sub.add_parser("exception", help="temporary exceptions to the policy, each with an expiry")
    exception.add_argument("action", choices=("add", "list", "remove"))
    exception.add_argument("--id", help="a name (default: generated); remove takes it")
    exception.add_argument("--mac", help="device exception: this device ...")
    exception.add_argument("--segment", help="... sits in this segment until it expires")
    exception.add_argument("--from", dest="src", help="flow exception: from this segment ...")
    exception.add_argument("--to", dest="dst", help="... to this one")
    exception.add_argument("--proto")
    exception.add_argument("--ports", nargs="+", help="ports or ranges low-high (default: any)")
    exception.add_argument("--expires", type=_duration, help="how long it lasts, e.g. 90m, 2h")
    exception.add_argument("--reason", default="", help="why: goes into the audit log")
    exception.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    exception.set_defaults(func=cmd_exception)

    demo = sub.add_parser("demo", help="the virtual hospital in network namespaces")
    demo.add_argument("--keep-running", action="store_true", help="leave the ward up for exploring; Ctrl-C cleans up")
    demo.add_argument("--json-report", type=Path, help="write the outcome of every phase as JSON")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="medseg-xdp: %(levelname)s: %(message)s")
    try:
        return int(args.func(args))
    except (CliError, ConfigError, LoaderError, ValueError, OSError) as exc:
        print(f"medseg-xdp: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
