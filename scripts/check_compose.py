#!/usr/bin/env python3
"""Checks the docker compose topology without Docker (CI has none). From the repository root:
`python3 scripts/check_compose.py [DIR]` (DIR: docker/); exit 1 with one line per problem.

compose.yaml: required services, image or build (context, Dockerfile), volume sources, named
volumes, configs, depends_on (with healthchecks), ports published on 127.0.0.1 only, once.
shardgate.toml (tomllib): what `shardgate check` needs ([proxy] listen, [[users]],
[[databases]] with shards), on all interfaces, servers that are compose Postgres services.
haproxy.cfg: servers are the Shardgate services on the listen port, httpchk /readyz on the
metrics port, no PROXY protocol. prometheus.yml: scrapes them on the metrics port. Grafana:
provider path = dashboards' mount, dashboard JSON parses, names provisioned data sources.
"""
import json
import pathlib
import re
import sys
import tomllib

try:
    import yaml
except ImportError:
    print("scripts/check_compose.py needs PyYAML: pip install pyyaml", file=sys.stderr)
    sys.exit(2)

REQUIRED = ["primary", "replica", "shard1", "shardgate-a", "shardgate-b",
            "haproxy", "prometheus", "grafana"]
SHARDGATE = ["shardgate-a", "shardgate-b"]
problems = []
problem = problems.append


def load_yaml(path):
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        problem(f"{path}: does not parse: {' '.join(str(e).split())}")
        return None


def as_list(value):
    return [] if value is None else value if isinstance(value, list) else [value]


def mounts(svc):
    """(source, target) of each volume of a service, short or long syntax."""
    out = []
    for v in as_list(svc.get("volumes")):
        if isinstance(v, dict):
            out.append((str(v.get("source", "")), str(v.get("target", ""))))
        else:
            parts = str(v).split(":") + [""]
            out.append((parts[0], parts[1]))
    return out


def mount_target(d, svc, rel):
    """Where the host path `rel` (relative to the compose dir) is mounted in `svc`."""
    want = (d / rel).resolve()
    for src, dst in mounts(svc):
        if src.startswith((".", "/", "~")) and (d / src).resolve() == want:
            return dst
    return None


def check_service(d, name, svc, compose):
    services = compose["services"]
    build = svc.get("build")
    if build is not None:
        ctx = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile",
                                                                          "Dockerfile")
        if not (d / ctx).is_dir():
            problem(f"{name}: build context {ctx} does not exist")
        elif not (d / ctx / dockerfile).is_file():
            problem(f"{name}: Dockerfile {dockerfile} does not exist in context {ctx}")
    elif not svc.get("image"):
        problem(f"{name}: neither image nor build")
    for src, dst in mounts(svc):
        if src.startswith((".", "/", "~")):
            if not (d / src).exists():
                problem(f"{name}: volume source {src} does not exist (relative to {d})")
        elif src and src not in (compose.get("volumes") or {}):
            problem(f"{name}: named volume {src} is not declared under volumes:")
        if not dst.startswith("/"):
            problem(f"{name}: volume {src} has no absolute target")
    for c in as_list(svc.get("configs")):
        src = c.get("source") if isinstance(c, dict) else c
        conf = (compose.get("configs") or {}).get(src)
        if conf is None:
            problem(f"{name}: config {src} is not declared under configs:")
        elif "file" in conf and not (d / conf["file"]).exists():
            problem(f"{name}: config {src}: file {conf['file']} does not exist")
    deps = svc.get("depends_on") or []
    for dep in deps:
        if dep not in services:
            problem(f"{name}: depends_on names no service: {dep}")
        elif isinstance(deps, dict) and (deps[dep] or {}).get("condition") == "service_healthy" \
                and "healthcheck" not in (services[dep] or {}):
            problem(f"{name}: waits for {dep} to be healthy, but {dep} has no healthcheck")
    for word in map(str, as_list(svc.get("entrypoint"))):
        if word.startswith("/") and word.endswith(".sh") and word not in dict(mounts(svc)).values():
            problem(f"{name}: entrypoint script {word} is not mounted")


def published_ports(name, svc, seen):
    for p in as_list(svc.get("ports")):
        if isinstance(p, dict):
            ip, host = p.get("host_ip", ""), str(p.get("published", ""))
        else:
            parts = str(p).split("/")[0].rsplit(":", 2)
            ip = parts[0] if len(parts) == 3 else ""
            host = parts[-2] if len(parts) >= 2 else ""
        if ip != "127.0.0.1":
            problem(f"{name}: port {p} is not bound to 127.0.0.1")
        if host in seen:
            problem(f"{name}: host port {host} is also published by {seen[host]}")
        elif host:
            seen[host] = name


def split_addr(addr, what):
    host, _, port = str(addr).rpartition(":")
    if not port.isdigit():
        problem(f"{what}: `{addr}` is not host:port")
        return None, None
    return host, int(port)


def check_servers(path, i, db, services):
    if not db.get("shards"):
        problem(f"{path}: databases[{i}] has no [[databases.shards]]")
    for j, shard in enumerate(db.get("shards", [])):
        where = f"{path}: databases[{i}].shards[{j}]"
        addrs = ([shard["primary"]] if shard.get("primary") else []) + shard.get("replicas", [])
        addrs += [s.get("address", "") for s in shard.get("servers", [])]
        if not addrs:
            problem(f"{where}: no primary or servers")
        for addr in addrs:
            host, port = split_addr(addr, where)
            if host is None:
                continue
            if host not in services:
                problem(f"{where}: server {addr} is not a compose service")
            elif not str((services[host] or {}).get("image", "")).startswith("postgres"):
                problem(f"{where}: server {addr} is not a Postgres service")
            elif port != 5432:
                problem(f"{where}: server {addr}: Postgres listens on 5432")


def check_shardgate_toml(d, compose):
    """Returns (listen port, metrics port), or None."""
    path = d / "shardgate.toml"
    try:
        conf = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        problem(f"{path}: does not parse: {e}")
        return None
    proxy, ports = conf.get("proxy", {}), []
    for key in ("listen", "metrics_listen"):
        if not proxy.get(key):
            problem(f"{path}: [proxy] has no {key}")
            continue
        host, port = split_addr(proxy[key], f"{path}: proxy.{key}")
        if host is not None and host not in ("0.0.0.0", "[::]", "::"):
            problem(f"{path}: proxy.{key} = {proxy[key]}: other containers cannot reach it")
        ports.append(port)
    if not conf.get("users"):
        problem(f"{path}: no [[users]]")
    if not conf.get("databases"):
        problem(f"{path}: no [[databases]]")
    services = compose["services"]
    for i, db in enumerate(conf.get("databases", [])):
        check_servers(path, i, db, services)
    dockerfile = d / "Dockerfile"
    cfg = re.search(r'"--config",\s*"([^"]+)"', dockerfile.read_text(encoding="utf-8")) \
        if dockerfile.is_file() else None
    for name in SHARDGATE:
        if name in services and cfg and mount_target(d, services[name] or {},
                                                     "shardgate.toml") != cfg[1]:
            problem(f"{name}: shardgate.toml is not mounted at {cfg[1]} (the Dockerfile's CMD)")
    return ports if len(ports) == 2 and None not in ports else None


def check_haproxy(d, compose, listen_port, metrics_port):
    path = d / "haproxy.cfg"
    if not path.is_file():
        problem(f"{path}: missing")
        return
    hap = compose["services"].get("haproxy") or {}
    if mount_target(d, hap, "haproxy.cfg") != "/usr/local/etc/haproxy/haproxy.cfg":
        problem("haproxy: haproxy.cfg is not mounted at /usr/local/etc/haproxy/haproxy.cfg")
    section, servers, httpchk, binds = "", {}, set(), set()
    for line in path.read_text(encoding="utf-8").splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if not line[0].isspace():
            section = " ".join(words[:2])
        if any(w.startswith("send-proxy") for w in words):
            problem(f"{path}: `{line.strip()}`: Shardgate does not accept the PROXY protocol")
        if words[0] == "bind" and len(words) > 1:
            binds.add(words[1].rpartition(":")[2])
        if words[:2] == ["option", "httpchk"] and words[-1] == "/readyz":
            httpchk.add(section)
        if words[0] == "server" and len(words) > 2:
            servers[words[1]] = (section, words)
    for sec in sorted({sec for sec, _ in servers.values()} - httpchk):
        problem(f"{path}: {sec} has no `option httpchk GET /readyz`")
    hosts = {w[2].rpartition(":")[0] for _, w in servers.values()}
    if hosts != set(SHARDGATE):
        problem(f"{path}: backend servers {sorted(hosts)}, expected {SHARDGATE}")
    for name, (_, w) in servers.items():
        if w[2].rpartition(":")[2] != str(listen_port):
            problem(f"{path}: server {name} {w[2]}: Shardgate listens on {listen_port}")
        opts = " ".join(w[3:])
        if f"check port {metrics_port}" not in opts or not re.search(r"\binter\s", opts):
            problem(f"{path}: server {name} needs `check port {metrics_port}` and `inter`")
    for p in as_list(hap.get("ports")):
        target = str(p["target"] if isinstance(p, dict) else str(p).split("/")[0].split(":")[-1])
        if target not in binds:
            problem(f"{path}: haproxy publishes container port {target}, nothing binds it")


def check_prometheus(d, compose, metrics_port):
    path = d / "prometheus.yml"
    conf = load_yaml(path)
    if conf is None:
        return
    prom = compose["services"].get("prometheus") or {}
    if mount_target(d, prom, "prometheus.yml") != "/etc/prometheus/prometheus.yml":
        problem("prometheus: prometheus.yml is not mounted at /etc/prometheus/prometheus.yml")
    targets = {t for job in conf.get("scrape_configs") or []
               for sc in job.get("static_configs") or [] for t in sc.get("targets") or []}
    want = {f"{s}:{metrics_port}" for s in SHARDGATE}
    if targets != want:
        problem(f"{path}: targets {sorted(targets)}, expected {sorted(want)}")


def check_grafana(d, compose):
    graf = compose["services"].get("grafana") or {}
    prov = d / "grafana/provisioning"
    if mount_target(d, graf, "grafana/provisioning") != "/etc/grafana/provisioning":
        problem("grafana: grafana/provisioning is not mounted at /etc/grafana/provisioning")
    dash_target = mount_target(d, graf, "grafana/dashboards")
    if dash_target is None:
        problem("grafana: grafana/dashboards is not mounted")
    uids = set()
    for f in sorted(prov.glob("datasources/*.y*ml")):
        for ds in (load_yaml(f) or {}).get("datasources") or []:
            uids.add(ds.get("uid"))
            host = re.sub(r"^\w+://", "", str(ds.get("url", ""))).split("/")[0].split(":")[0]
            if host not in compose["services"]:
                problem(f"{f}: data source {ds.get('name')}: url names no compose service")
    providers = [p for f in sorted(prov.glob("dashboards/*.y*ml"))
                 for p in (load_yaml(f) or {}).get("providers") or []]
    if not providers:
        problem(f"{prov}/dashboards: no dashboard provider")
    for p in providers:
        path = str((p.get("options") or {}).get("path", ""))
        if dash_target and not (path + "/").startswith(dash_target.rstrip("/") + "/"):
            problem(f"grafana provider {p.get('name')}: path {path} is not the mount {dash_target}")
    dashboards = sorted((d / "grafana/dashboards").glob("*.json"))
    if not dashboards:
        problem(f"{d}/grafana/dashboards: no dashboard JSON")
    for f in dashboards:
        try:
            dash = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            problem(f"{f}: does not parse: {e}")
            continue
        used = set(re.findall(r'"uid": "([^"]+)"', json.dumps(dash.get("panels", []))))
        for uid in sorted(used - uids):
            problem(f"{f}: data source uid {uid} is not provisioned")


def main():
    d = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "docker")
    compose = load_yaml(d / "compose.yaml")
    if compose is not None:
        services = compose["services"] = compose.get("services") or {}
        for name in (n for n in REQUIRED if n not in services):
            problem(f"compose.yaml: no service {name}")
        seen = {}
        for name, svc in services.items():
            check_service(d, name, svc or {}, compose)
            published_ports(name, svc or {}, seen)
        ports = check_shardgate_toml(d, compose)
        if ports:
            check_haproxy(d, compose, *ports)
            check_prometheus(d, compose, ports[1])
        check_grafana(d, compose)
    print("\n".join(problems) or f"{d}: compose topology OK ({len(compose['services'])} services)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
