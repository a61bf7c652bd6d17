"""Shape comparison of OpenNebula XML documents and XML-RPC envelopes.

A small tokenizer (oned's documents have no attributes, comments or processing instructions)
keeps what a generic parser loses: whether a text is CDATA and whether an empty element is
written ``<X/>`` or ``<X></X>``.  lxml is only used to check well-formedness.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from html import unescape

from lxml import etree

_TOKEN = re.compile(
    r"<!\[CDATA\[(?P<cdata>.*?)\]\]>"
    r"|<(?P<close>/?)(?P<name>[A-Za-z_][\w.\-]*)\s*(?P<selfclose>/?)>"
    r"|(?P<text>[^<]+)",
    re.S,
)


@dataclass
class Node:
    name: str
    children: list = field(default_factory=list)
    texts: list = field(default_factory=list)  # [(kind, value)]: kind "cdata" or "text"
    selfclose: bool = False

    @property
    def kind(self) -> str:
        if self.children:
            return "elem"
        kinds = {k for k, _ in self.texts}
        if not kinds:
            return "empty"
        return kinds.pop() if len(kinds) == 1 else "mixed"

    @property
    def value(self) -> str:
        return "".join(v for _, v in self.texts)

    def child(self, name: str):
        return next((c for c in self.children if c.name == name), None)

    def describe(self) -> str:
        k = self.kind
        if k == "empty":
            return f"<{self.name}/>" if self.selfclose else f"<{self.name}></{self.name}>"
        if k == "cdata":
            return f"CDATA {self.value!r}"
        if k == "text":
            return f"text {self.value!r}"
        if k == "elem":
            return "children [" + ", ".join(c.name for c in self.children[:12]) + \
                (", ..." if len(self.children) > 12 else "") + "]"
        return f"mixed {self.texts!r}"


def parse(xml: str) -> Node:
    """Parse an oned document into a Node tree (raises ValueError if not well formed)."""
    etree.fromstring(xml.encode(), etree.XMLParser(strip_cdata=False, resolve_entities=False))
    root = Node("#document")
    stack = [root]
    pos = 0
    for m in _TOKEN.finditer(xml):
        if m.start() != pos:
            raise ValueError(f"unexpected markup at {pos}: {xml[pos:pos + 60]!r}")
        pos = m.end()
        if m.group("cdata") is not None:
            stack[-1].texts.append(("cdata", m.group("cdata")))
        elif m.group("name") is not None:
            name = m.group("name")
            if m.group("close"):
                if stack[-1].name != name:
                    raise ValueError(f"</{name}> closes <{stack[-1].name}>")
                stack.pop()
            else:
                node = Node(name, selfclose=bool(m.group("selfclose")))
                stack[-1].children.append(node)
                if not node.selfclose:
                    stack.append(node)
        else:
            text = m.group("text")
            if stack[-1] is root:
                if text.strip():
                    raise ValueError(f"text outside the root: {text[:40]!r}")
                continue
            stack[-1].texts.append(("text", unescape(text)))
    if pos != len(xml) or len(stack) != 1 or len(root.children) != 1:
        raise ValueError("document is truncated or has several roots")
    return root.children[0]


# --------------------------------------------------------------------------------------------
# comparison
# --------------------------------------------------------------------------------------------

@dataclass
class Rules:
    """How to compare text values, by path (e.g. /VM/TEMPLATE/VMID)."""

    vm_ids: dict = field(default_factory=dict)    # reference VM id -> one-sim VM id
    tmpl_ids: dict = field(default_factory=dict)  # reference template id -> one-sim id
    skip_subtrees: tuple = ()                     # path regexes whose subtrees are not compared
    keyed_collections: dict = field(default_factory=dict)  # path regex -> key child name
    loose_collections: tuple = ()                 # path regexes whose item counts may differ


TIME = re.compile(r"/(STIME|ETIME|PSTIME|PETIME|RSTIME|RETIME|ESTIME|EETIME|REGTIME|LAST_POLL|"
                  r"TIMESTAMP)$")
VM_ID = re.compile(r"^(/VM|/VM_POOL/VM)/(ID|TEMPLATE/VMID|HISTORY_RECORDS/HISTORY/OID)$")
TMPL_ID = re.compile(r"^(/VMTEMPLATE/ID|(/VM|/VM_POOL/VM)/TEMPLATE/TEMPLATE_ID)$")
UUID = re.compile(r"/OS/UUID$")
NONEMPTY = re.compile(r"(/DEPLOY_ID|/HISTORY/HOSTNAME|^(/HOST|/HOST_POOL/HOST)/NAME|"
                      r"^(/HOST|/HOST_POOL/HOST)/TEMPLATE/HOSTNAME)$")
REQ_ID = re.compile(r"/HISTORY/REQUEST_ID$")
ANY_INT = re.compile(r"(/HISTORY/HID|^(/HOST|/HOST_POOL/HOST)/ID|"
                     r"^(/HOST|/HOST_POOL/HOST)/MONITORING/ID|"
                     r"^(/HOST|/HOST_POOL/HOST)/VMS/ID|"
                     r"^(/HOST|/HOST_POOL/HOST)/HOST_SHARE/(MEM_USAGE|CPU_USAGE|RUNNING_VMS))$")
TMPL_NAME = re.compile(r"^/VMTEMPLATE/NAME$")
HOST_MONITORING_VALUES = re.compile(r"^(/HOST|/HOST_POOL/HOST)/MONITORING/")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _int(v: str):
    try:
        return int(v)
    except ValueError:
        return None


def compare_value(path: str, ref: str, sim: str, rules: Rules, diffs: list) -> None:
    def bad(why: str):
        diffs.append(f"{path}: {why} (reference {ref!r}, one-sim {sim!r})")

    if TIME.search(path):
        if _int(sim) is None or (ref == "0") != (sim == "0"):
            bad("time: zero/non-zero differs or not an integer")
    elif VM_ID.search(path):
        if _int(ref) is not None and _int(ref) in rules.vm_ids:
            if _int(sim) != rules.vm_ids[_int(ref)]:
                bad(f"expected VM id {rules.vm_ids[_int(ref)]}")
        elif _int(sim) is None:
            bad("not an integer")
    elif TMPL_ID.search(path):
        if _int(ref) is not None and _int(ref) in rules.tmpl_ids:
            if _int(sim) != rules.tmpl_ids[_int(ref)]:
                bad(f"expected template id {rules.tmpl_ids[_int(ref)]}")
        elif _int(sim) is None:
            bad("not an integer")
    elif UUID.search(path):
        if not UUID_RE.match(sim):
            bad("not a UUID")
    elif NONEMPTY.search(path):
        if (ref == "") != (sim == ""):
            bad("empty/non-empty differs")
    elif REQ_ID.search(path):
        if _int(sim) is None or (ref == "-1") != (sim == "-1"):
            bad("request id: -1/other differs")
    elif ANY_INT.search(path):
        if _int(sim) is None:
            bad("not an integer")
    elif TMPL_NAME.search(path):
        if re.sub(r"\d+$", "N", ref) != re.sub(r"\d+$", "N", sim):
            bad("template name differs")
    elif HOST_MONITORING_VALUES.search(path):
        if (_int(ref) is None) != (_int(sim) is None):
            bad("numeric/non-numeric differs")
    elif ref != sim:
        bad("value differs")


def compare(ref: Node, sim: Node, rules: Rules, diffs: list, path: str = "") -> None:
    if ref.name != sim.name:
        diffs.append(f"{path}: element <{ref.name}> in the reference, <{sim.name}> in one-sim")
        return
    p = f"{path}/{ref.name}"
    if any(re.search(rx, p) for rx in rules.skip_subtrees):
        return
    loose = any(re.search(rx, p) for rx in rules.loose_collections)
    keyed = next((k for rx, k in rules.keyed_collections.items() if re.search(rx, p)), None)
    if (loose or keyed) and "empty" in (ref.kind, sim.kind) and ref.kind != sim.kind:
        empty = ref if ref.kind == "empty" else sim
        if empty.selfclose:
            diffs.append(f"{p}: an empty collection is written <{p.rsplit('/', 1)[-1]}>"
                         f"</{p.rsplit('/', 1)[-1]}> by oned, "
                         f"{'one-sim' if empty is sim else 'reference'} wrote a self-closing tag")
        return
    if ref.kind != sim.kind:
        diffs.append(f"{p}: reference has {ref.describe()}, one-sim has {sim.describe()}")
        return
    kind = ref.kind
    if kind == "empty":
        if ref.selfclose != sim.selfclose:
            diffs.append(f"{p}: reference writes {ref.describe()}, one-sim writes "
                         f"{sim.describe()}")
    elif kind in ("cdata", "text"):
        compare_value(p, ref.value, sim.value, rules, diffs)
    elif kind == "mixed":
        if [k for k, _ in ref.texts] != [k for k, _ in sim.texts]:
            diffs.append(f"{p}: text/CDATA mix differs: {ref.texts!r} vs {sim.texts!r}")
    elif keyed:
        _compare_keyed(ref, sim, keyed, rules, diffs, p)
    elif loose:
        exemplar = ref.children[0]
        for c in sim.children:
            compare(exemplar, c, rules, diffs, p)
    else:
        _compare_children(ref.children, sim.children, rules, diffs, p)


def _compare_children(refs: list, sims: list, rules: Rules, diffs: list, p: str) -> None:
    rn = [c.name for c in refs]
    sn = [c.name for c in sims]
    if rn == sn:
        for r, s in zip(refs, sims):
            compare(r, s, rules, diffs, p)
        return
    sm = difflib.SequenceMatcher(a=rn, b=sn, autojunk=False)
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op == "equal":
            for r, s in zip(refs[i1:i2], sims[j1:j2]):
                compare(r, s, rules, diffs, p)
        elif op == "delete":
            diffs.append(f"{p}: one-sim lacks {rn[i1:i2]} (after {rn[i1 - 1] if i1 else 'start'})")
        elif op == "insert":
            diffs.append(f"{p}: one-sim has extra {sn[j1:j2]} (after "
                         f"{sn[j1 - 1] if j1 else 'start'})")
        else:
            diffs.append(f"{p}: reference has {rn[i1:i2]} where one-sim has {sn[j1:j2]}")


def _compare_keyed(ref: Node, sim: Node, key: str, rules: Rules, diffs: list, p: str) -> None:
    def k(n: Node):
        c = n.child(key)
        return c.value if c is not None else None

    by_key = {k(c): c for c in ref.children}
    for c in sim.children:
        if k(c) not in by_key:
            diffs.append(f"{p}: one-sim lists {c.name} {key}={k(c)!r}, the reference does not")
            continue
        compare(by_key[k(c)], c, rules, diffs, p)


def diff_docs(ref_xml: str, sim_xml: str, rules: Rules) -> list[str]:
    diffs: list[str] = []
    compare(parse(ref_xml), parse(sim_xml), rules, diffs)
    return diffs


def subtree(xml: str, path: str) -> Node | None:
    """The node at an absolute path like /HOST/HOST_SHARE/PCI_DEVICES."""
    node = parse(xml)
    parts = path.strip("/").split("/")
    if node.name != parts[0]:
        return None
    for part in parts[1:]:
        node = node.child(part)
        if node is None:
            return None
    return node


# --------------------------------------------------------------------------------------------
# XML-RPC envelopes
# --------------------------------------------------------------------------------------------

def skeleton(raw: bytes) -> bytes:
    """The envelope with string contents and integers replaced by placeholders."""
    s = re.sub(rb"<string>.*?</string>", b"<string>S</string>", raw, flags=re.S)
    return re.sub(rb"<(i4|i8|int)>-?\d+</\1>", rb"<\1>N</\1>", s)


def xmlrpc_c_escape(text: str) -> str:
    """How xmlrpc-c writes a string value (xmlrpc_serialize.c): & < > escaped, CR as &#x0d;."""
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("\r", "&#x0d;"))


def raw_strings(raw: bytes) -> list[str]:
    return [m.decode("utf-8") for m in re.findall(rb"<string>(.*?)</string>", raw, re.S)]
