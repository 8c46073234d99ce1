#!/usr/bin/env python3
"""Checks the crate's module graph: no import cycles, and the layer rules of
docs/ARCHITECTURE.md.

Every `crate::…`, `super::…` and `self::…` path in src/ is resolved to the
module it names. Two modules depend on each other when any item of one (or of
its submodules) names the other (or its submodules). The check is made at every
level of the module tree: among the children of each module, the dependencies
must form no cycle (a child naming its own parent is how Rust modules share a
parent's types, and is not a cycle). Then each layer rule (a module that must
not name another) is checked. Prints what is wrong and exits 1; prints a
summary and exits 0 when everything holds.

Run from the repository root: scripts/check-layers.py (CI runs it).
"""

import re
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path("src")

# Layer rules: (module, modules it must never name, why). Prefixes match
# submodules too.
RULES = [
    ("ws", ["channel", "protocol", "hub", "engine", "gateway", "auth", "filter", "collector", "web", "client", "bench", "cli", "app", "config"],
     "ws/ knows bytes and frames, never channels"),
    ("engine", ["hub", "gateway", "ws", "protocol", "web", "client", "bench", "cli", "app", "collector", "config"],
     "the engine never imports the hub or anything above it"),
    ("hub", ["gateway", "web", "client", "bench", "cli", "app", "collector", "config"],
     "the hub knows no dialect, route or HTTP"),
    ("protocol", ["gateway", "hub", "engine", "web", "client", "bench", "cli", "app", "collector", "auth", "config"],
     "protocol/ encodes and parses, and does no I/O"),
    ("filter", ["gateway", "hub", "engine", "ws", "protocol", "web", "cli", "app", "config"],
     "filters are pure"),
    ("auth", ["gateway", "hub", "engine", "ws", "web", "cli", "app", "collector", "config"],
     "auth/ derives identities; it does not serve"),
    ("collector", ["gateway", "hub", "ws", "web", "client", "bench", "cli", "app"],
     "the collector is a producer: engine below, nothing of the gateway"),
    ("gateway", ["cli", "app", "bench", "client"],
     "the gateway is configured by config.rs types, not by flags"),
    ("web", ["gateway", "hub", "engine", "cli", "app"],
     "web/ serves embedded files; the routes that need a gateway live in gateway/"),
    ("bench", ["cli", "app", "gateway", "hub"],
     "the load generator is a client: configured by plain types, not clap structs"),
    ("client", ["cli", "app", "gateway", "hub"],
     "the command-line client is configured by plain types, not clap structs"),
    ("metrics", ["gateway", "hub", "engine", "collector", "web", "cli", "app", "ws", "protocol",
                 "auth", "filter", "channel", "config", "client", "bench"],
     "metrics.rs imports no component: each registers its series into a registry passed in"),
    ("config", ["gateway", "web", "cli", "app", "collector"],
     "config.rs is data"),
]


def module_of(path: Path) -> tuple:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def known_modules():
    mods = set()
    for path in SRC.rglob("*.rs"):
        m = module_of(path)
        for i in range(len(m) + 1):
            mods.add(m[:i])
    return mods


PATH_RE = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+|::\{)")
USE_GROUP_RE = re.compile(r"\buse\s+(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^;]*)\};", re.S)


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(re.sub(r"//.*", "", line) for line in text.splitlines())


def resolve(base: tuple, head: str, rest: list, mods: set):
    """The deepest known module a path names, from a file whose module is `base`."""
    if head == "crate":
        cur = ()
    elif head == "self":
        cur = base
    else:
        cur = base[:-1]
    segs = list(rest)
    while segs and segs[0] == "super":
        cur = cur[:-1]
        segs.pop(0)
    best = cur
    for s in segs:
        if cur + (s,) in mods:
            cur = cur + (s,)
            best = cur
        else:
            break
    return best


def dependencies():
    mods = known_modules()
    deps = defaultdict(set)
    for path in sorted(SRC.rglob("*.rs")):
        if path.name in ("main.rs",) and path.parent == SRC:
            base = ()
        base = module_of(path)
        # A file `foo.rs` (not mod.rs) is module foo; `super` is its parent.
        text = strip_comments(path.read_text())
        # `#[cfg(test)] mod tests` may name anything: tests are not layering.
        cut = re.search(r"#\[cfg\(test\)\]\s*mod tests", text)
        if cut:
            text = text[: cut.start()]
        paths = []
        for m in USE_GROUP_RE.finditer(text):
            head, prefix, group = m.group(1), m.group(2), m.group(3)
            prefix_segs = [s for s in prefix.split("::") if s]
            for item in re.split(r",(?![^{]*\})", group):
                item = item.strip()
                if not item:
                    continue
                first = re.split(r"::|\s|\{", item)[0]
                paths.append((head, prefix_segs + ([first] if first and first != "self" else [])))
        for m in PATH_RE.finditer(text):
            head, rest = m.group(1), m.group(2)
            if rest == "::{":
                continue
            paths.append((head, [s for s in rest.split("::") if s]))
        for head, segs in paths:
            target = resolve(base, head, segs, mods)
            if target != base and target != ():
                deps[base].add(target)
    return mods, deps


def find_cycle(nodes, edges):
    color = {n: 0 for n in nodes}
    stack = []

    def visit(n):
        color[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if color[m] == 1:
                return stack[stack.index(m):] + [m]
            if color[m] == 0:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        color[n] = 2
        return None

    for n in sorted(nodes):
        if color[n] == 0:
            found = visit(n)
            if found:
                return found
    return None


def main():
    mods, deps = dependencies()
    problems = []
    # Cycles among the children of every module.
    parents = defaultdict(set)
    for m in mods:
        if m:
            parents[m[:-1]].add(m)
    levels = 0
    for parent, children in sorted(parents.items()):
        edges = defaultdict(set)
        for src, targets in deps.items():
            if src[: len(parent)] != parent or len(src) <= len(parent):
                continue
            a = src[: len(parent) + 1]
            for t in targets:
                if t[: len(parent)] != parent or len(t) <= len(parent):
                    continue
                b = t[: len(parent) + 1]
                if a != b:
                    edges[a].add(b)
        levels += 1
        cycle = find_cycle(children, edges)
        if cycle:
            problems.append("import cycle: " + " -> ".join("::".join(c) for c in cycle))
    # Layer rules.
    for module, forbidden, why in RULES:
        for src, targets in sorted(deps.items()):
            if src[:1] != (module,):
                continue
            for t in sorted(targets):
                if t[:1] and t[0] in forbidden:
                    problems.append(f"{'::'.join(src)} names {'::'.join(t)}: {why}")
    if problems:
        for p in problems:
            print(p)
        print(f"\n{len(problems)} problem(s) in the module graph")
        sys.exit(1)
    edges = sum(len(t) for t in deps.values())
    print(f"module graph: {len(mods)} modules, {edges} dependencies, no cycle at {levels} levels, {len(RULES)} layer rules hold")


if __name__ == "__main__":
    main()
