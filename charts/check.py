#!/usr/bin/env python3
"""Checks the Ferry chart without helm: renders it with charts/render (Go's
text/template + sprig, like Helm) for the default values and every file in
charts/ferry/ci/, then checks that

- the merged values validate against values.schema.json (as `helm install` would);
- every rendered object validates against the Kubernetes JSON schema
  (kubernetes-validate, strict); custom resources (ServiceMonitor, PrometheusRule)
  get a structural check;
- the invariants that matter hold: each voter's peers list every voter, gossip
  seeds name every voter, ports agree between Services, containers and the
  listen addresses in the config, probes point to paths Ferry serves, the drain
  deadline is below the termination grace period, every config key is a flag of
  its subcommand (docs/configuration.md), selectors match pod labels;
- yamllint accepts the values files.

Usage: check.py RENDER_BINARY [--kube-version 1.31.0]. Exit status 1 with every
problem listed.
"""

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import tomllib

import jsonschema
import kubernetes_validate
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
CHART = os.path.join(HERE, "ferry")
ROOT = os.path.dirname(HERE)
SERVED_PATHS = {"/healthz", "/readyz", "/metrics"}
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}
LABELS = [
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
]


def merge(dst, src):
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            merge(dst[k], v)
        else:
            dst[k] = v
    return dst


def flags_by_section():
    """Long flags per subcommand, from docs/configuration.md."""
    flags, section = {}, None
    with open(os.path.join(ROOT, "docs", "configuration.md")) as f:
        for line in f:
            m = re.match(r"^## `ferry ([a-z]+)`", line)
            if m:
                section = m.group(1)
                flags.setdefault(section, set())
                continue
            if line.startswith("## "):
                section = None
            m = re.match(r"^\| `--([a-z0-9-]+)`", line)
            if m and section:
                flags[section].add(m.group(1))
    return flags


class Checker:
    def __init__(self, case):
        self.case = case
        self.problems = []

    def fail(self, msg):
        self.problems.append(f"{self.case}: {msg}")

    def expect(self, ok, msg):
        if not ok:
            self.fail(msg)


def container_ports(pod_spec):
    ports = {}
    for c in pod_spec.get("containers", []):
        for p in c.get("ports", []):
            ports[p["name"]] = (p["containerPort"], p.get("protocol", "TCP"), c["name"])
    return ports


def listen_port(addr):
    return int(addr.rsplit(":", 1)[1])


def check_case(case, render, value_files, kube_version, flags, schema):
    ch = Checker(case)
    values = yaml.safe_load(open(os.path.join(CHART, "values.yaml")))
    for f in value_files:
        merge(values, yaml.safe_load(open(f)) or {})
    try:
        jsonschema.validate(values, schema)
    except jsonschema.ValidationError as e:
        ch.fail(f"values do not match values.schema.json: {e.message} at {list(e.path)}")
    out = subprocess.run([render, CHART, *value_files], capture_output=True, text=True)
    if out.returncode != 0:
        ch.fail(f"render failed: {out.stderr.strip()}")
        return ch.problems, []
    objects = json.loads(out.stdout)
    by_kind = {}
    for r in objects:
        obj = r["object"]
        kind = obj.get("kind")
        name = obj.get("metadata", {}).get("name", "?")
        by_kind.setdefault(kind, []).append(obj)
        labels = obj.get("metadata", {}).get("labels", {})
        for label in LABELS:
            ch.expect(label in labels, f"{kind}/{name} lacks label {label}")
        if kind in CUSTOM_KINDS:
            ch.expect(obj.get("apiVersion") == "monitoring.coreos.com/v1" and "spec" in obj,
                      f"{kind}/{name}: not a monitoring.coreos.com/v1 object with a spec")
            continue
        try:
            kubernetes_validate.validate(copy.deepcopy(obj), kube_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            ch.fail(f"{kind}/{name} ({r['source']}): {e.message} at {'.'.join(map(str, e.path))}")
        except Exception as e:  # unknown kind or version
            ch.fail(f"{kind}/{name} ({r['source']}): {e}")

    configs = [c for c in by_kind.get("ConfigMap", []) if "ferry.toml" in c.get("data", {})]
    ch.expect(len(configs) == 1, "exactly one ConfigMap with ferry.toml")
    if not configs:
        return ch.problems, objects
    config = tomllib.loads(configs[0]["data"]["ferry.toml"])
    for section in ("control", "edge"):
        for key in config.get(section, {}):
            ch.expect(key in flags.get(section, set()), f"[{section}] {key} is not a flag of ferry {section}")
    for key in config:
        if not isinstance(config[key], dict):
            ch.expect(key in flags.get("global", set()) or key in ("log", "config"), f"top-level {key} is not global")

    replicas = values["control"]["replicas"]
    sts = by_kind.get("StatefulSet", [])
    ch.expect(len(sts) == 1, "one control-plane StatefulSet")
    if sts:
        s = sts[0]
        name, svc = s["metadata"]["name"], s["spec"]["serviceName"]
        ch.expect(s["spec"]["replicas"] == replicas, "StatefulSet replicas = control.replicas")
        ns = "default"
        raft = values["control"]["ports"]["raft"]
        want = [f"{i + 1}={name}-{i}.{svc}.{ns}.svc.{values['clusterDomain']}:{raft}" for i in range(replicas)]
        ch.expect(config["control"].get("peers") == want, f"peers {config['control'].get('peers')} != {want}")
        gossip = values["gossip"]["port"]
        seeds = [f"{name}-{i}.{svc}.{ns}.svc.{values['clusterDomain']}:{gossip}" for i in range(replicas)]
        ch.expect(config["control"].get("gossip-seeds") == seeds, "control gossip seeds name every voter")
        ch.expect(config["edge"].get("gossip-seeds") == seeds, "edge gossip seeds name every voter")
        headless = [x for x in by_kind.get("Service", []) if x["metadata"]["name"] == svc]
        ch.expect(len(headless) == 1 and headless[0]["spec"].get("clusterIP") == "None"
                  and headless[0]["spec"].get("publishNotReadyAddresses") is True,
                  "the voters' Service is headless and publishes not-ready addresses")
        ch.expect(s["spec"].get("podManagementPolicy") == "Parallel", "voters start in parallel")
        pod = s["spec"]["template"]["spec"]
        ports = container_ports(pod)
        ch.expect(ports.get("api", (None,))[0] == listen_port(config["control"]["http-listen"]), "api port = http-listen")
        ch.expect(ports.get("raft", (None,))[0] == listen_port(config["control"]["raft-listen"]), "raft port = raft-listen")
        ch.expect(ports.get("gossip", (None,))[0] == listen_port(config["control"]["gossip-listen"]), "gossip port")
        ch.expect(ports.get("raft", (0, ""))[1] == "UDP", "raft is UDP (QUIC)")
        ch.expect(s["spec"]["selector"]["matchLabels"].items() <= s["spec"]["template"]["metadata"]["labels"].items(),
                  "StatefulSet selector matches its pods")
        probes(ch, "control", pod, ports)
        liveness = pod["containers"][0].get("livenessProbe", {}).get("httpGet", {}).get("path")
        ch.expect(liveness == "/healthz", "voter liveness is /healthz (never on quorum)")
        pdb = [p for p in by_kind.get("PodDisruptionBudget", [])]
        ch.expect(len(pdb) == 1 and pdb[0]["spec"].get("maxUnavailable") == 1, "a PDB with maxUnavailable 1")
        vct = s["spec"].get("volumeClaimTemplates", [])
        ch.expect(any(v["metadata"]["name"] == "data" for v in vct), "a PVC per voter for sled data")

    kind = values["edge"]["kind"]
    edges = by_kind.get(kind, [])
    ch.expect(len(edges) == 1, f"one edge {kind}")
    if edges:
        e = edges[0]
        pod = e["spec"]["template"]["spec"]
        ports = container_ports(pod)
        ch.expect(ports.get("quic", (None,))[0] == listen_port(config["edge"]["quic-listen"]), "quic port = quic-listen")
        ch.expect(ports.get("quic", (0, ""))[1] == "UDP", "QUIC is UDP")
        ch.expect(ports.get("http", (None,))[0] == listen_port(config["edge"]["http-listen"]), "http port = http-listen")
        ch.expect(e["spec"]["selector"]["matchLabels"].items() <= e["spec"]["template"]["metadata"]["labels"].items(),
                  "edge selector matches its pods")
        probes(ch, "edge", pod, ports)
        grace = pod.get("terminationGracePeriodSeconds", 30)
        drain = config["edge"].get("shutdown-grace", "30s")
        drain_s = int(drain.rstrip("s"))
        ch.expect(drain_s < grace, f"drain deadline {drain_s}s below terminationGracePeriodSeconds {grace}")
        pre = pod["containers"][0].get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        ch.expect(any("edges drain" in part for part in pre), "a preStop hook drains the edge")
        ch.expect(pod.get("hostNetwork", False) == values["edge"]["hostNetwork"], "hostNetwork as the values say")
        env = {v["name"]: v.get("valueFrom", {}) for v in pod["containers"][0].get("env", [])}
        ch.expect("topology.kubernetes.io/region" in json.dumps(env.get("NODE_REGION", {})),
                  "the region comes from the topology label through the downward API")
        if kind == "Deployment":
            ch.expect(e["spec"]["replicas"] == values["edge"]["replicas"], "edge replicas")
        # Edges hold no operator token: they reach the API over HTTPS with their node
        # certificate, and mount the Secret's access-token key alone.
        ch.expect("control-token-file" not in config["edge"], "edges are configured with no operator token")
        ch.expect(all(u.startswith("https://") for u in config["edge"]["control-plane"]),
                  "edges reach the control plane over https://")
        for v in pod.get("volumes", []):
            secret = v.get("secret", {})
            if secret.get("secretName", "").endswith("-secrets") or v["name"] == "secrets":
                keys = [i["key"] for i in secret.get("items", [])]
                ch.expect(keys == ["token-secret", "join-token"], f"edge volume {v['name']} mounts"
                          f" {keys or 'the whole Secret'} (the operator token with it)")

    # Every Service port targets a container port of the pods it selects, same protocol.
    workloads = [w for k in ("StatefulSet", "Deployment", "DaemonSet") for w in by_kind.get(k, [])]
    # No edge pod can read the CA key: every volume of the CA Secret in an edge pod
    # (init containers included) holds its ca.pem item alone. Voters sign edges'
    # certificates, so their pods may mount the key.
    ca_secret = values["tls"]["existingSecret"] or None
    for w in workloads:
        pod = w["spec"]["template"]["spec"]
        if w["metadata"]["labels"].get("app.kubernetes.io/component") != "edge":
            continue
        for v in pod.get("volumes", []):
            secret = v.get("secret")
            if not secret:
                continue
            name = secret["secretName"]
            is_ca = name == ca_secret or name.endswith("-ca")
            if is_ca:
                keys = [i["key"] for i in secret.get("items", [])]
                ch.expect(keys == ["ca.pem"], f"{w['metadata']['name']}: edge volume {v['name']} mounts the CA Secret"
                          f" {'whole' if not keys else keys} (the CA key with it)")
        ch.expect(not pod.get("initContainers"), f"{w['metadata']['name']}: edge pods issue no certificate themselves")
    for svc in by_kind.get("Service", []):
        sel = svc["spec"].get("selector", {})
        pods = [w for w in workloads if sel.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        ch.expect(len(pods) == 1, f"Service {svc['metadata']['name']} selects one workload")
        for w in pods:
            ports = container_ports(w["spec"]["template"]["spec"])
            for p in svc["spec"]["ports"]:
                target = p.get("targetPort", p["port"])
                found = ports.get(target) if isinstance(target, str) else next(
                    (v for v in ports.values() if v[0] == target), None)
                ch.expect(found is not None, f"Service {svc['metadata']['name']} port {p['name']} targets nothing")
                if found:
                    ch.expect(found[0] == p["port"] and found[1] == p.get("protocol", "TCP"),
                              f"Service {svc['metadata']['name']} port {p['name']}: {p['port']}/{p.get('protocol')}"
                              f" vs container {found[0]}/{found[1]}")
    return ch.problems, objects


def probes(ch, what, pod, ports):
    for c in pod["containers"]:
        for probe in ("readinessProbe", "livenessProbe"):
            get = c.get(probe, {}).get("httpGet")
            ch.expect(get is not None, f"{what} {probe} is an HTTP probe")
            if get:
                ch.expect(get["path"] in SERVED_PATHS, f"{what} {probe} path {get['path']} is not served")
                ch.expect(get["port"] in ports and ports[get["port"]][1] == "TCP",
                          f"{what} {probe} port {get['port']} is not a TCP container port")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("render")
    parser.add_argument("--kube-version", default="1.31.0")
    args = parser.parse_args()
    flags = flags_by_section()
    flags["global"] = {"log", "config"}
    schema = json.load(open(os.path.join(CHART, "values.schema.json")))
    cases = [("default", [])] + [
        (f, [os.path.join(CHART, "ci", f)]) for f in sorted(os.listdir(os.path.join(CHART, "ci")))
    ]
    problems, seen = [], {}
    for case, files in cases:
        found, objects = check_case(case, args.render, files, args.kube_version, flags, schema)
        problems += found
        seen[case] = sorted({o["object"]["kind"] for o in objects})
    lint = subprocess.run(
        [sys.executable, "-m", "yamllint", "-d", "{extends: default, rules: {line-length: {max: 110}, comments: {min-spaces-from-content: 1}, document-start: disable}}",
         os.path.join(CHART, "values.yaml"), os.path.join(CHART, "ci"), os.path.join(CHART, "Chart.yaml")],
        capture_output=True, text=True)
    if lint.returncode != 0:
        problems.append("yamllint: " + lint.stdout.strip())
    print(json.dumps({"cases": seen, "problems": problems}, indent=2))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
