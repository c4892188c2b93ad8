"""Checks the rendered Kubernetes manifests and the Dockerfile against promptgate itself.

Run by scripts/check-deploy.sh (which renders the kustomizations first); not meant to be run
alone. Every problem is printed as `FAIL <check>: <what>`; the exit status is 1 if there was
any. Checks:

  schema   every manifest validates against the Kubernetes JSON schemas (strict: unknown
           fields are errors) of the oldest version we support and of the newest one the
           kubernetes-validate package ships. Custom resources (ServiceMonitor) have no schema
           there: they are reported as skipped and their wiring is checked instead.
  flags    every flag and PROMPTGATE_* variable given to promptgate (manifests and the
           Dockerfile) is one the binary's `serve --help` lists; values of flags with a fixed
           set of values, or numeric ones, are checked too.
  exposure the proxy listens on loopback only and no port, Service or hostNetwork publishes
           it; an admin/metrics port reachable from outside the pod is limited by a
           NetworkPolicy that names where it may be reached from.
  wiring   references resolve (volumes, ConfigMaps, Secrets, probe and metrics ports), the
           paths promptgate writes are on writable volumes (the root filesystem is
           read-only) and every mount is used, the security settings are in place, and the
           prompt ConfigMaps hold exactly the files of the repository's prompts/ folder.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

failures: list[str] = []


def fail(check: str, message: str) -> None:
    failures.append(f"{check}: {message}")
    print(f"FAIL {check}: {message}")


def info(message: str) -> None:
    print(f"  {message}")


# --- what the binary accepts -------------------------------------------------------------


class Option:
    def __init__(self, flag: str, placeholder: str | None, text: str):
        self.flag = flag
        self.placeholder = placeholder  # None: a boolean switch
        m = re.search(r"\[env:\s*([A-Z0-9_]+)", text)
        self.env = m.group(1) if m else None
        m = re.search(r"\[possible values:\s*([^\]]+)\]", text)
        if m:
            self.values = [v.strip() for v in m.group(1).split(",")]
        else:
            # The long form: "Possible values:" then "- name: description" lines.
            m = re.search(r"Possible values:(.*?)(?:\[|$)", text, re.S)
            self.values = re.findall(r"-\s+([A-Za-z0-9_.-]+)(?::|\s|$)", m.group(1)) if m else None


def accepted_options(binary: str) -> dict[str, Option]:
    out = subprocess.run(
        [binary, "serve", "--help"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    options: dict[str, Option] = {}
    header = re.compile(r"^\s+(?:-\w,\s+)?(--[a-z0-9][a-z0-9-]*)(?:[ =]<([^>]+)>)?(.*)$")
    current = None
    blocks: list[tuple[str, str | None, list[str]]] = []
    for line in out.splitlines():
        m = header.match(line)
        if m:
            current = (m.group(1), m.group(2), [m.group(3)])
            blocks.append(current)
        elif current is not None:
            current[2].append(line)
    for flag, placeholder, lines in blocks:
        if flag in ("--help", "--version"):
            continue
        options[flag] = Option(flag, placeholder, " ".join(s.strip() for s in lines))
    if not options:
        raise SystemExit(f"cannot find any option in `{binary} serve --help`:\n{out}")
    return options


NUMERIC = {"SECONDS", "MS", "BYTES", "N", "NUM", "COUNT"}


def check_value(where: str, name: str, option: Option, value: str) -> None:
    if option.values is not None and value not in option.values:
        fail("flags", f"{where}: {name}={value!r} is not one of {', '.join(option.values)}")
    elif option.placeholder and option.placeholder.upper() in NUMERIC:
        if not re.fullmatch(r"\d+(\.\d+)?", value):
            fail("flags", f"{where}: {name}={value!r} is not a number")
    elif option.placeholder is None and value.lower() not in (
        "true", "false", "1", "0", "yes", "no", "on", "off"
    ):
        fail("flags", f"{where}: {name}={value!r} is not a boolean")


def check_env(where: str, name: str, value: str | None, by_env: dict[str, Option]) -> None:
    if not name.startswith("PROMPTGATE_"):
        return
    option = by_env.get(name)
    if option is None:
        fail("flags", f"{where}: environment variable {name} is not accepted by the binary "
                      f"(no `[env: {name}]` in `promptgate serve --help`)")
    elif value is not None:
        check_value(where, name, option, value)


def check_argv(where: str, argv: list[str], options: dict[str, Option]) -> None:
    tokens = list(argv)
    while tokens and (tokens[0].endswith("promptgate") or tokens[0].startswith("/")):
        tokens.pop(0)
    if not tokens:
        return  # the image's CMD (serve) applies
    if tokens[0] != "serve":
        fail("flags", f"{where}: the first argument is {tokens[0]!r}, not the `serve` command")
        return
    i = 1
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("-"):
            fail("flags", f"{where}: unexpected argument {token!r}")
            continue
        flag, eq, value = token.partition("=")
        option = options.get(flag)
        if option is None:
            fail("flags", f"{where}: flag {flag} is not accepted by the binary "
                          f"(not in `promptgate serve --help`)")
            continue
        if option.placeholder is not None and not eq:
            if i >= len(tokens):
                fail("flags", f"{where}: flag {flag} needs a value")
                continue
            value = tokens[i]
            i += 1
        if option.placeholder is not None or eq:
            check_value(where, flag, option, value)


# --- the Dockerfile ----------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def dockerfile_env(path: Path) -> dict[str, str]:
    """The runtime stage's ENV (the last FROM onwards)."""
    env: dict[str, str] = {}
    for word, rest in dockerfile_instructions(path):
        if word == "FROM":
            env = {}
        elif word == "ENV":
            if "=" not in rest.split()[0]:
                key, _, value = rest.partition(" ")
                env[key] = value.strip()
            else:
                for key, value in re.findall(r'([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S*)', rest):
                    env[key] = value.strip('"')
    return env


def check_dockerfile(path: Path, options: dict[str, Option], by_env: dict[str, Option]) -> dict[str, str]:
    env = dockerfile_env(path)
    where = f"{path.parent.name}/{path.name}"
    for key, value in env.items():
        check_env(where, key, value, by_env)
    argv: list[str] = []
    for word, rest in dockerfile_instructions(path):
        if word == "FROM":
            argv = []
        elif word in ("ENTRYPOINT", "CMD"):
            try:
                argv += yaml.safe_load(rest)
            except yaml.YAMLError:
                fail("flags", f"{where}: {word} is not in the JSON (exec) form: {rest}")
    check_argv(f"{where} ENTRYPOINT+CMD", argv, options)
    info(f"{path.name}: {len([k for k in env if k.startswith('PROMPTGATE_')])} PROMPTGATE_* variables, command {argv}")
    return env


# --- schemas -----------------------------------------------------------------------------

CRD_GROUPS = ("monitoring.coreos.com/",)


def check_schemas(name: str, docs: list[dict], versions: list[str]) -> list[dict]:
    import kubernetes_validate

    crds = []
    for doc in docs:
        what = f"{name}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        if str(doc.get("apiVersion", "")).startswith(CRD_GROUPS):
            crds.append(doc)
            print(f"  SKIP schema {what}: {doc['apiVersion']} is a custom resource (CRD) with no "
                  f"offline schema; its wiring is checked below instead")
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                fail("schema", f"{what}: no schema for {doc.get('apiVersion')} {doc.get('kind')} "
                               f"in Kubernetes {version}")
            except kubernetes_validate.ValidationError as e:
                path = "/".join(str(p) for p in e.path)
                fail("schema", f"{what} (Kubernetes {version}): {path}: {e.message}")
    info(f"{name}: {len(docs) - len(crds)} objects checked against the strict schemas of Kubernetes "
         f"{', '.join(versions)}")
    return crds


# --- wiring ------------------------------------------------------------------------------


def is_promptgate(container: dict) -> bool:
    image = str(container.get("image", ""))
    repo = image.split("@")[0].rsplit("/", 1)[-1].split(":")[0]
    return container.get("name") == "promptgate" or repo == "promptgate"


def port_of(address: str) -> int | None:
    m = re.fullmatch(r"(?:\[[0-9a-fA-F:.]+\]|[^:]*):(\d+)", address or "")
    return int(m.group(1)) if m else None


def resolve_port(pod: dict, port) -> int | None:
    if isinstance(port, int):
        return port
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        for p in c.get("ports", []):
            if p.get("name") == port:
                return p["containerPort"]
    return None


def under(path: str, mount: str) -> bool:
    path, mount = os.path.normpath(path), os.path.normpath(mount)
    return path == mount or path.startswith(mount.rstrip("/") + "/")


def effective(container: dict, pod: dict, key: str):
    value = container.get("securityContext", {}).get(key)
    return value if value is not None else pod.get("securityContext", {}).get(key)


def unreadable(volume: dict, container: dict, pod: dict) -> str | None:
    """Why the container's user cannot read the files of a Secret or ConfigMap volume, if it
    cannot. The kubelet writes them as root:root (group fsGroup when the pod sets one) with
    `mode` of the item, else `defaultMode`, else 0644."""
    source = volume.get("secret") or volume.get("configMap")
    if not source:
        return None
    uid = effective(container, pod, "runAsUser")
    if uid is None:
        return None  # the image's user: not known here
    gid = effective(container, pod, "runAsGroup")
    fs_group = (pod.get("securityContext") or {}).get("fsGroup")
    groups = set((pod.get("securityContext") or {}).get("supplementalGroups") or [])
    groups |= {g for g in (gid, fs_group) if g is not None}
    file_gid = fs_group if fs_group is not None else 0
    default = source.get("defaultMode", 0o644)
    for item in source.get("items") or [{"mode": default}]:
        mode = item.get("mode", default)
        if uid == 0 and mode & 0o400:
            continue
        if mode & 0o004 or (mode & 0o040 and file_gid in groups):
            continue
        owner = f"root:{file_gid}"
        what = f"file {item['path']}" if "path" in item else "its files"
        return (f"{what} (mode {mode:04o}, owned by {owner}) cannot be read by user {uid} "
                f"(groups {sorted(groups) or 'none'}): set the pod's securityContext.fsGroup "
                f"to the container's group, or the mode to 0444")
    return None


def check_workload(name: str, workload: dict, objects: dict, image_env: dict[str, str],
                   options: dict[str, Option], by_env: dict[str, Option], prompts_dir: Path) -> None:
    kind, wname = workload["kind"], workload["metadata"]["name"]
    template = workload["spec"]["template"]
    pod = template["spec"]
    annotations = template.get("metadata", {}).get("annotations", {}) or {}
    init, main = pod.get("initContainers", []), pod.get("containers", [])
    volumes = {v["name"]: v for v in pod.get("volumes", [])}

    # Names must be unique, port names short enough (IANA service names).
    seen_ports: set[str] = set()
    for c in init + main:
        for p in c.get("ports", []):
            pname = p.get("name")
            if pname is None:
                continue
            if not re.fullmatch(r"(?=.{1,15}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?", pname) or not re.search("[a-z]", pname):
                fail("wiring", f"{name}: {kind} {wname}: port name {pname!r} is not a valid IANA service name (at most 15 characters)")
            if pname in seen_ports:
                fail("wiring", f"{name}: {kind} {wname}: port name {pname!r} is used twice in the pod")
            seen_ports.add(pname)

    for c in init + main:
        where = f"{name}: {kind} {wname} container {c['name']}"
        # Every mount has a volume; every ConfigMap/Secret a volume or variable needs exists.
        for m in c.get("volumeMounts", []):
            if m["name"] not in volumes:
                fail("wiring", f"{where}: volumeMount {m['name']} has no volume")
        for e in c.get("env", []):
            ref = (e.get("valueFrom") or {})
            for key, kind_ in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                r = ref.get(key)
                if r and not r.get("optional"):
                    obj = objects.get((kind_, r["name"]))
                    if obj is None:
                        fail("wiring", f"{where}: {e['name']} needs {kind_} {r['name']}, which is not in the output "
                                       f"(mark it optional or add it)")
                    elif r["key"] not in (obj.get("data") or {}) and r["key"] not in (obj.get("stringData") or {}):
                        fail("wiring", f"{where}: {e['name']} needs key {r['key']} of {kind_} {r['name']}")
        # Hardened by default.
        sc = c.get("securityContext", {}) or {}
        if effective(c, pod, "runAsNonRoot") is not True:
            fail("wiring", f"{where}: runAsNonRoot is not true")
        if sc.get("readOnlyRootFilesystem") is not True:
            fail("wiring", f"{where}: readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            fail("wiring", f"{where}: allowPrivilegeEscalation is not false")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            fail("wiring", f"{where}: capabilities do not drop ALL")
        if (effective(c, pod, "seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
            fail("wiring", f"{where}: no RuntimeDefault seccomp profile")
        res = c.get("resources", {}) or {}
        if "memory" not in (res.get("requests") or {}) or "memory" not in (res.get("limits") or {}):
            fail("wiring", f"{where}: no memory request and limit")
        for m in c.get("volumeMounts", []):
            problem = unreadable(volumes.get(m["name"]) or {}, c, pod)
            if problem:
                fail("wiring", f"{where}: volume {m['name']} at {m['mountPath']}: {problem}")
    for v in volumes.values():
        cm = v.get("configMap")
        if cm and not cm.get("optional") and ("ConfigMap", cm["name"]) not in objects:
            fail("wiring", f"{name}: {kind} {wname}: volume {v['name']} needs ConfigMap {cm['name']}, which is not in the output")
        sec = v.get("secret")
        if sec and not sec.get("optional") and ("Secret", sec["secretName"]) not in objects:
            fail("wiring", f"{name}: {kind} {wname}: volume {v['name']} needs Secret {sec['secretName']}, which is not in the output")

    gates = [(c, True) for c in init if is_promptgate(c)] + [(c, False) for c in main if is_promptgate(c)]
    if not gates:
        fail("wiring", f"{name}: {kind} {wname}: no promptgate container")
    for c, is_init in gates:
        where = f"{name}: {kind} {wname} container {c['name']}"
        info(f"{name}: promptgate is a {'native sidecar (initContainers)' if is_init else 'classic sidecar (containers)'}")
        if is_init and c.get("restartPolicy") != "Always":
            fail("wiring", f"{where}: an init container without `restartPolicy: Always` never lets the pod start "
                           f"(promptgate does not exit)")
        if not is_init and "restartPolicy" in c:
            fail("wiring", f"{where}: `restartPolicy` on a regular container is rejected by the API server")

        # Flags and variables, then the effective configuration (image defaults + manifest).
        env = dict(image_env)
        for e in c.get("env", []):
            check_env(where, e["name"], e.get("value"), by_env)
            env[e["name"]] = e.get("value", "<from " + next(iter(e.get("valueFrom", {"?": 0}))) + ">")
        for src in c.get("envFrom", []):
            ref = src.get("configMapRef") or src.get("secretRef") or {}
            obj = objects.get(("ConfigMap" if "configMapRef" in src else "Secret", ref.get("name")))
            for key, value in ((obj or {}).get("data") or {}).items():
                check_env(f"{where} envFrom {ref.get('name')}", src.get("prefix", "") + key, value, by_env)
        check_argv(where, (c.get("command") or []) + (c.get("args") or []), options)

        # Flags given as arguments win over the environment.
        argv = (c.get("command") or []) + (c.get("args") or [])
        for flag in ("--listen", "--admin-listen", "--health-listen"):
            key = "PROMPTGATE_" + flag[2:].upper().replace("-", "_")
            for i, token in enumerate(argv):
                if token == flag and i + 1 < len(argv):
                    env[key] = argv[i + 1]
                elif token.startswith(flag + "="):
                    env[key] = token.split("=", 1)[1]
        listen_addr = env.get("PROMPTGATE_LISTEN", "127.0.0.1:8080")
        listen = port_of(listen_addr)
        admin = port_of(env.get("PROMPTGATE_ADMIN_LISTEN", "")) or listen
        health = port_of(env.get("PROMPTGATE_HEALTH_LISTEN", "")) or listen
        host = listen_addr.rsplit(":", 1)[0].strip("[]")
        # exposure: the proxy spends the app's provider key for whoever reaches it, and pod
        # IPs are routable across the cluster: it must listen on loopback only, and nothing
        # may publish its port.
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        # --console-only serves no proxy: its one port is the console and admin API, held to
        # a NetworkPolicy like any admin port below.
        console_only = "--console-only" in argv or str(env.get("PROMPTGATE_CONSOLE_ONLY", "")).lower() in ("true", "1", "yes", "on")
        if console_only:
            info(f"{where}: console only (no proxy)")
        if not loopback and not console_only:
            fail("exposure", f"{where}: the proxy listens on {listen_addr}, reachable from outside the pod; "
                             f"listen on 127.0.0.1 and give the probes --health-listen")
        for p in c.get("ports", []):
            if p.get("containerPort") == listen and not console_only:
                fail("exposure", f"{where}: the proxy port {listen} is declared as a containerPort "
                                 f"({p.get('name')}); it must stay inside the pod")
            if p.get("hostPort"):
                fail("exposure", f"{where}: port {p.get('containerPort')} has hostPort {p['hostPort']}, "
                                 f"which publishes it on the node")
        if pod.get("hostNetwork"):
            fail("exposure", f"{where}: hostNetwork puts the proxy's loopback on the node's")
        for (k, _), svc in objects.items():
            if k != "Service":
                continue
            labels = workload["spec"]["template"]["metadata"].get("labels") or {}
            selector = (svc.get("spec") or {}).get("selector") or {}
            if not selector or not selector.items() <= labels.items():
                continue
            for sp in (svc.get("spec") or {}).get("ports") or []:
                if resolve_port(pod, sp.get("targetPort", sp.get("port"))) == listen and not console_only:
                    fail("exposure", f"{name}: Service {svc['metadata']['name']} publishes the proxy port {listen}")
        # The admin port beyond the pod: only with a NetworkPolicy that admits it from a named
        # source (the scraper), not from everywhere.
        admin_addr = env.get("PROMPTGATE_ADMIN_LISTEN", listen_addr)
        try:
            admin_loopback = ipaddress.ip_address(admin_addr.rsplit(":", 1)[0].strip("[]")).is_loopback
        except ValueError:
            admin_loopback = False
        if not admin_loopback:
            labels = workload["spec"]["template"]["metadata"].get("labels") or {}
            policies = [o for (k, _), o in objects.items() if k == "NetworkPolicy"
                        and ((o["spec"].get("podSelector") or {}).get("matchLabels") or {}).items() <= labels.items()
                        and "Ingress" in (o["spec"].get("policyTypes") or ["Ingress"])]
            if not policies:
                fail("exposure", f"{where}: the admin/metrics port {admin} is reachable from outside the pod "
                                 f"and no NetworkPolicy selecting the pod limits it to the scraper")
            for pol in policies:
                for rule in pol["spec"].get("ingress") or []:
                    ports = [resolve_port(pod, q.get("port")) for q in rule.get("ports") or []]
                    if (not ports or admin in ports) and not rule.get("from"):
                        fail("exposure", f"{name}: NetworkPolicy {pol['metadata']['name']} admits the admin/metrics "
                                         f"port {admin} from anywhere; name the scraper in `from`")
            if policies:
                info(f"{name}: admin/metrics port {admin} limited by NetworkPolicy "
                     f"{', '.join(p['metadata']['name'] for p in policies)}")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = (c.get(probe) or {}).get("httpGet")
            if not get:
                continue
            if resolve_port(pod, get.get("port")) != health:
                fail("wiring", f"{where}: {probe} port {get.get('port')} is not the health port {health} "
                               f"(--health-listen, where /healthz and /readyz are served)")
            if health == listen and loopback:
                fail("wiring", f"{where}: {probe} goes to the proxy port, which listens on loopback; "
                               f"the kubelet sends probes to the pod IP: use --health-listen")
            if get.get("path") not in ("/healthz", "/readyz"):
                fail("wiring", f"{where}: {probe} path {get.get('path')} is neither /healthz nor /readyz")
        if annotations.get("prometheus.io/scrape") == "true":
            if str(annotations.get("prometheus.io/port")) != str(admin):
                fail("wiring", f"{name}: {kind} {wname}: prometheus.io/port is {annotations.get('prometheus.io/port')}, "
                               f"but /metrics is served on {admin}")
            if annotations.get("prometheus.io/path", "/metrics") != "/metrics":
                fail("wiring", f"{name}: {kind} {wname}: prometheus.io/path is not /metrics")

        # The root filesystem is read-only: everything promptgate writes must be on a volume.
        mounts = c.get("volumeMounts", [])
        writable = [m["mountPath"] for m in mounts if not m.get("readOnly")]
        state = env.get("PROMPTGATE_STATE_DIR", ".promptgate")
        for what, path in (("PROMPTGATE_STATE_DIR", state),
                           ("PROMPTGATE_EVENTS", os.path.dirname(env["PROMPTGATE_EVENTS"]) if "PROMPTGATE_EVENTS" in env else None)):
            if path is None:
                continue
            if not os.path.isabs(path):
                fail("wiring", f"{where}: {what} ({path}) is relative to the working directory; use an absolute path on a volume")
            elif not any(under(path, m) for m in writable):
                fail("wiring", f"{where}: {what} ({path}) is not on a writable volume (the root filesystem is read-only)")
        # Every mount is used by some setting (a leftover prompt mount would go unnoticed).
        paths = [v for k, v in env.items() if k.startswith("PROMPTGATE_") and str(v).startswith("/")]
        for m in mounts:
            if not any(under(p, m["mountPath"]) or under(m["mountPath"], p) for p in paths):
                fail("wiring", f"{where}: {m['mountPath']} (volume {m['name']}) is mounted but no "
                               f"PROMPTGATE_* setting uses it")
        # Git write mode clones into the state folder: the credentials must be mounted, the
        # prompts folder is not used.
        git_mode = bool(env.get("PROMPTGATE_GIT_REMOTE"))
        for key in ("PROMPTGATE_GIT_TOKEN_FILE", "PROMPTGATE_GIT_SSH_KEY", "PROMPTGATE_GIT_KNOWN_HOSTS"):
            if git_mode and key in env and not any(under(env[key], m["mountPath"]) for m in mounts):
                fail("wiring", f"{where}: {key} ({env[key]}) is on no volume")
        prompts = env.get("PROMPTGATE_PROMPTS", "prompts")
        prompt_mounts = [m for m in mounts if under(m["mountPath"], prompts) or under(prompts, m["mountPath"])]
        if not prompt_mounts and not git_mode:
            fail("wiring", f"{where}: nothing is mounted at PROMPTGATE_PROMPTS ({prompts})")

        # Prompt ConfigMaps mounted per folder: exactly the repository's prompts/ folder.
        by_folder = {}
        for m in prompt_mounts:
            vol = volumes.get(m["name"], {})
            if "configMap" in vol and os.path.dirname(os.path.normpath(m["mountPath"])) == os.path.normpath(prompts):
                if m.get("subPath"):
                    fail("wiring", f"{where}: prompts mounted with subPath never see ConfigMap updates")
                by_folder[os.path.basename(m["mountPath"])] = vol["configMap"]
        if by_folder:
            folders = sorted(p.name for p in prompts_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
            for folder in sorted(set(folders) - set(by_folder)):
                fail("wiring", f"{where}: prompts/{folder} is not mounted at {prompts}/{folder}")
            for folder in sorted(set(by_folder) - set(folders)):
                fail("wiring", f"{where}: {prompts}/{folder} is mounted but prompts/{folder} does not exist")
            for folder in sorted(set(folders) & set(by_folder)):
                cm = by_folder[folder]
                obj = objects.get(("ConfigMap", cm["name"]))
                if obj is None:
                    continue  # reported above
                if cm.get("items"):
                    fail("wiring", f"{where}: ConfigMap {cm['name']} is mounted with items: new files would not appear")
                data = dict(obj.get("data") or {})
                data.update({k: None for k in (obj.get("binaryData") or {})})
                files = {p.name: p for p in (prompts_dir / folder).iterdir() if p.is_file() and not p.name.startswith(".")}
                for missing in sorted(set(files) - set(data)):
                    fail("wiring", f"{where}: prompts/{folder}/{missing} is not in ConfigMap {cm['name']} "
                                   f"(add it to the configMapGenerator)")
                for extra in sorted(set(data) - set(files)):
                    fail("wiring", f"{where}: ConfigMap {cm['name']} has {extra}, which is not in prompts/{folder}")
                for fname in sorted(set(files) & set(data)):
                    if data[fname] != files[fname].read_text():
                        fail("wiring", f"{where}: ConfigMap {cm['name']} key {fname} differs from prompts/{folder}/{fname}")
            info(f"{name}: {len(by_folder)} prompt folders mounted from ConfigMaps")


def check_service_monitors(name: str, crds: list[dict], objects: dict, workloads: list[dict]) -> None:
    for sm in crds:
        if sm.get("kind") != "ServiceMonitor":
            fail("wiring", f"{name}: {sm.get('kind')} is a custom resource this check does not know")
            continue
        where = f"{name}: ServiceMonitor {sm['metadata']['name']}"
        selector = ((sm.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        services = [o for (k, _), o in objects.items() if k == "Service"
                    and selector and selector.items() <= (o["metadata"].get("labels") or {}).items()]
        if not services:
            fail("wiring", f"{where}: its selector {selector} matches no Service")
            continue
        for svc in services:
            pods = [w for w in workloads
                    if (svc["spec"].get("selector") or {}).items() <= (w["spec"]["template"]["metadata"].get("labels") or {}).items()]
            if not pods:
                fail("wiring", f"{where}: Service {svc['metadata']['name']} selects no pod")
            for ep in sm["spec"].get("endpoints") or []:
                port = next((p for p in svc["spec"].get("ports", []) if p.get("name") == ep.get("port")), None)
                if port is None:
                    fail("wiring", f"{where}: endpoint port {ep.get('port')} is not a port of Service {svc['metadata']['name']}")
                    continue
                if ep.get("path", "/metrics") != "/metrics":
                    fail("wiring", f"{where}: endpoint path {ep.get('path')} is not /metrics")
                for w in pods:
                    podspec = w["spec"]["template"]["spec"]
                    target = resolve_port(podspec, port.get("targetPort", port["port"]))
                    for c in podspec.get("initContainers", []) + podspec.get("containers", []):
                        if not is_promptgate(c):
                            continue
                        env = {e["name"]: e.get("value") for e in c.get("env", [])}
                        admin = port_of(env.get("PROMPTGATE_ADMIN_LISTEN") or env.get("PROMPTGATE_LISTEN") or "")
                        if target != admin:
                            fail("wiring", f"{where}: scrapes port {target}, but promptgate serves /metrics on {admin}")
        info(f"{where}: selector, Service, port and path lead to promptgate's /metrics")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--dockerfile", required=True, type=Path)
    ap.add_argument("--prompts", required=True, type=Path)
    ap.add_argument("--kube-version", action="append", required=True)
    ap.add_argument("renders", nargs="+", help="NAME=FILE of `kubectl kustomize` output")
    args = ap.parse_args()

    options = accepted_options(args.binary)
    by_env = {o.env: o for o in options.values() if o.env}
    print(f"flags: `{args.binary} serve --help` accepts {len(options)} flags, "
          f"{len(by_env)} with a PROMPTGATE_* variable")
    image_env = check_dockerfile(args.dockerfile, options, by_env)

    for spec in args.renders:
        name, _, path = spec.partition("=")
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
        print(f"{name}: {len(docs)} objects: " + ", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in docs))
        crds = check_schemas(name, docs, args.kube_version)
        objects = {(d["kind"], d["metadata"]["name"]): d for d in docs}
        workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]
        if not workloads:
            fail("wiring", f"{name}: no workload")
        for w in workloads:
            check_workload(name, w, objects, image_env, options, by_env, args.prompts)
        check_service_monitors(name, crds, objects, workloads)

    if failures:
        print(f"\n{len(failures)} problem(s):")
        for f in failures:
            print(f"  - {f}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
