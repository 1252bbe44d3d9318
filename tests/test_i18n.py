"""The user's language (issue 21): the rule that picks it (tables), the catalogs (complete, up
to date with the source, Babel's placeholder and plural checks), no user-facing text left out
of them, and the real CLI, agent and tray in Traditional and Simplified Chinese, Japanese and
English, with --json the same in all four. (Under Wine: tests/windows/test_wine_agent.py.)"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

from kit import agentkit
from torchkeeper import i18n
from torchkeeper.platform.language import posix_languages

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "agent" / "torchkeeper"
LOCALE = PKG / "locale"
CATALOGS = ("zh_TW", "zh_CN", "ja")


# -- the rule ---------------------------------------------------------------------------------

@pytest.mark.parametrize("tag, want", [
    ("zh_TW.UTF-8", "zh_TW"), ("zh-TW", "zh_TW"), ("zh-Hant", "zh_TW"), ("zh-Hant-HK", "zh_TW"),
    ("zh_HK", "zh_TW"), ("zh_MO.Big5", "zh_TW"), ("zh_CN.UTF-8", "zh_CN"), ("zh-Hans", "zh_CN"),
    ("zh-Hans-TW", "zh_CN"), ("zh_SG", "zh_CN"), ("zh", "zh_CN"), ("ja_JP.UTF-8", "ja"), ("ja", "ja"),
    ("en_US.UTF-8", "en"), ("en-GB", "en"), ("C", "en"), ("C.UTF-8", "en"), ("POSIX", "en"),
    ("de_DE.UTF-8", None), ("ko-KR", None), ("", None), (None, None), ("sr_RS@latin", None),
])
def test_a_tag_becomes_a_catalog(tag, want):
    assert i18n.normalize(tag) == want


@pytest.mark.parametrize("env, config, os_langs, want", [
    (None, "auto", ["zh-TW", "en-US"], "zh_TW"),       # the OS
    (None, None, ["de-DE", "ja-JP"], "ja"),             # the first the OS prefers that has a catalog
    (None, "auto", ["de-DE", "fr-FR"], "en"),           # none: English
    (None, "zh_CN", ["zh-TW"], "zh_CN"),                # the config wins over the OS
    ("ja", "zh_CN", ["zh-TW"], "ja"),                   # TORCHKEEPER_LANG wins over both
    ("auto", "zh_CN", ["ja"], "zh_CN"),                 # "auto" defers
    ("klingon", None, ["ja"], "en"),                    # a named language without a catalog: English
    (None, "en", ["ja"], "en"),
])
def test_the_rule(env, config, os_langs, want):
    assert i18n.choose(env, config, os_langs) == want


@pytest.mark.parametrize("env, want", [
    ({"LANG": "zh_TW.UTF-8"}, ["zh_TW.UTF-8"]),
    ({"LANG": "en_US.UTF-8", "LC_MESSAGES": "ja_JP.UTF-8"}, ["ja_JP.UTF-8"]),
    ({"LANG": "ja_JP.UTF-8", "LC_ALL": "zh_CN.UTF-8"}, ["zh_CN.UTF-8"]),
    ({"LANG": "en_US.UTF-8", "LANGUAGE": "zh_TW:ja"}, ["zh_TW", "ja", "en_US.UTF-8"]),
    ({"LANG": "C", "LANGUAGE": "ja"}, ["C"]),           # GNU gettext: the C locale ignores LANGUAGE
    ({"LC_ALL": "C.UTF-8", "LANGUAGE": "ja"}, ["C"]),
    ({}, []),
])
def test_posix_variables(env, want):
    assert posix_languages(env) == want


def test_a_missing_catalog_is_english_not_a_crash(monkeypatch, tmp_path):
    monkeypatch.setattr(i18n, "LOCALE_DIR", tmp_path)        # an install without the .mo files
    try:
        assert i18n.activate("zh_TW") == "en" and i18n._("Quit") == "Quit"
    finally:
        monkeypatch.undo()
        i18n.activate("en")


# -- the catalogs -----------------------------------------------------------------------------

def _read(path: Path):
    with path.open("rb") as f:
        return read_po(f, locale=path.parts[-3] if path.suffix == ".po" else None)


@pytest.fixture(scope="module")
def source_ids(tmp_path_factory) -> set:
    """The messages in the source now (pybabel extract, as `installer/catalogs.py update` runs it)."""
    pot = tmp_path_factory.mktemp("pot") / "now.pot"
    sys.path.insert(0, str(REPO / "installer"))
    try:
        import catalogs
    finally:
        sys.path.pop(0)
    catalogs.extract(pot)
    return {m.id for m in _read(pot) if m.id}


@pytest.mark.parametrize("lang", CATALOGS)
def test_every_message_is_translated_and_passes_babels_checks(lang, source_ids):
    cat = _read(LOCALE / lang / "LC_MESSAGES" / "torchkeeper.po")
    ids = {m.id for m in cat if m.id}
    assert not source_ids - ids, (f"{lang}: messages in the source but not in the catalog (run "
                                  f"`python installer/catalogs.py update`, then translate): {sorted(source_ids - ids)[:5]}")
    assert not ids - source_ids, f"{lang}: messages no longer in the source: {sorted(ids - source_ids)[:5]}"
    untranslated = [m.id for m in cat if m.id and (not m.string or "fuzzy" in m.flags
                    or (isinstance(m.string, tuple) and not all(m.string)))]
    assert not untranslated, f"{lang}: {len(untranslated)} untranslated, e.g. {untranslated[:3]}"
    # placeholders kept exactly (python-format) and the plural forms the language has
    problems = [(m.id, str(e)) for m, errors in cat.check() for e in errors]
    assert not problems, problems[:5]
    assert cat.num_plurals == 1   # Chinese and Japanese have one form; ngettext still picks it
    assert len(ids) > 300


def test_the_compiled_catalogs_say_it_in_each_language():
    words = {}
    for lang in CATALOGS:
        assert i18n.activate(lang) == lang
        words[lang] = (i18n._("Quit"), i18n.ngettext("torchkeeper: %(n)d target ok",
                                                       "torchkeeper: %(n)d targets ok", 3) % {"n": 3})
    i18n.activate("en")
    assert words == {"zh_TW": ("結束", "torchkeeper：3 個目標正常"), "zh_CN": ("退出", "torchkeeper：3 个目标正常"),
                     "ja": ("終了", "torchkeeper: ターゲット 3 個すべて正常")}
    assert i18n.ngettext("torchkeeper: %(n)d target ok", "torchkeeper: %(n)d targets ok", 1) % {"n": 1} == \
        "torchkeeper: 1 target ok"


# what carries text a person reads: (call name) -> its positional arguments and keywords
_USER_TEXT = {
    "TKError": ((0, 1), ("hint",)), "UsageError": ((0, 1), ("hint",)), "NotFound": ((0, 1), ("hint",)),
    "BadArchive": ((0, 1), ("hint",)), "Refused": ((0, 1), ("hint",)), "OperationFailed": ((0, 1), ("hint",)),
    "Toast": ((1, 2), ("title", "body")), "Reason": ((2, 3), ("message", "hint")), "_emit": ((2,), ()),
    "Item": ((0,), ()), "Decision": ((1,), ()), "DriverStatus": ((), ("message", "hint")),
}


def _literal_text(node) -> bool:
    """A string a person would read, written in place: a literal with words, or an f-string."""
    if isinstance(node, ast.IfExp):
        return _literal_text(node.body) or _literal_text(node.orelse)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):   # "words " + name
        return _literal_text(node.left) or _literal_text(node.right)
    if isinstance(node, ast.BoolOp):                                   # lines or "none yet"
        return any(_literal_text(v) for v in node.values)
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.Constant) and any(c.isalpha() for c in v.value) for v in node.values)
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and \
        sum(c.isalpha() for c in node.value) >= 2


def test_no_user_facing_text_bypasses_the_catalogs():
    """Every error, hint, toast, gate reason, decision, menu item and CLI summary written as a
    literal goes through _() / ngettext(): one written in place would stay English."""
    found = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            if name not in _USER_TEXT:
                continue
            pos, kws = _USER_TEXT[name]
            args = [node.args[i] for i in pos if i < len(node.args)] + \
                   [k.value for k in node.keywords if k.arg in kws]
            found += [f"{path.relative_to(REPO)}:{a.lineno}: {name}(...)" for a in args if _literal_text(a)]
    assert not found, "\n".join(found)


# -- the real thing ---------------------------------------------------------------------------

LANGS = {"zh_TW.UTF-8": "zh_TW", "zh_CN.UTF-8": "zh_CN", "ja_JP.UTF-8": "ja", "C": "en"}


def _env(lang: str) -> dict:
    """The OS's language and nothing else (this suite pins TORCHKEEPER_LANG=en elsewhere)."""
    return {"TORCHKEEPER_LANG": None, "LANGUAGE": None, "LC_ALL": None, "LC_MESSAGES": None, "LANG": lang}


def test_a_refusal_and_status_in_each_language_and_json_the_same(tmp_path, build, run_tk):
    """A `use` the gate refuses (a cuDNN for CUDA 11 on a CUDA 12 torch): the error, the
    hint and status in the OS's language; --json byte for byte the same in all four."""
    agentkit.patched_target(tmp_path, build, run_tk, apply=False)
    src = build.cudnn_archive(tmp_path / "cu11", version="8.9.7.29", cuda_major=11, platform="windows")
    r = run_tk("bundle", "create", src, "--name", "cu11", "--json")
    assert r.rc == 0, r
    said, js = {}, {}
    for lang in LANGS:
        r = run_tk("use", "cu11", "--target", "a1111", extra_env=_env(lang))
        assert r.rc == 3 and r.err.count("\nhint: ") == 1 and r.err.startswith("error: "), r
        said[lang] = r.err
        st = run_tk("status", extra_env=_env(lang))
        assert st.rc in (0, 1), st
        said[lang] += st.out
        j = run_tk("use", "cu11", "--target", "a1111", "--json", extra_env=_env(lang))
        s = run_tk("status", "--json", extra_env=_env(lang))
        js[lang] = (j.rc, j.out, s.out)
    assert "目標「a1111」" in said["zh_TW.UTF-8"] and "相容性檢查" in said["zh_TW.UTF-8"], said["zh_TW.UTF-8"]
    assert "目标“a1111”" in said["zh_CN.UTF-8"] and "兼容性检查" in said["zh_CN.UTF-8"], said["zh_CN.UTF-8"]
    assert "ターゲット「a1111」" in said["ja_JP.UTF-8"] and "互換性チェック" in said["ja_JP.UTF-8"], said["ja_JP.UTF-8"]
    assert "target 'a1111'" in said["C"] and "compatibility gate" in said["C"], said["C"]
    assert len(set(said.values())) == 4
    assert len(set(js.values())) == 1 and js["C"][0] == 3 and '"reasons"' in js["C"][1], js["C"]


def test_the_config_and_torchkeeper_lang_choose_over_the_os(run_tk, tk_home):
    agentkit.write_config(tk_home, '[ui]\nlanguage = "ja"\n')
    assert "ターゲットはまだありません" in run_tk("status", extra_env=_env("zh_TW.UTF-8")).out
    r = run_tk("status", extra_env={**_env("zh_TW.UTF-8"), "TORCHKEEPER_LANG": "zh_CN"})
    assert "尚无目标" in r.out, r
    agentkit.write_config(tk_home, '[ui]\nlanguage = "tlh"\n')
    r = run_tk("status", extra_env=_env("zh_TW.UTF-8"))
    assert r.rc == 2 and "ui.language" in r.err and "\n請使用 " in r.err.replace("hint: ", "\n"), r


@pytest.mark.parametrize("lang, title, first", [
    ("zh_TW.UTF-8", "torchkeeper：找不到 torch 安裝", "首次執行"),
    ("zh_CN.UTF-8", "torchkeeper：未找到 torch 安装", "首次运行"),
    ("ja_JP.UTF-8", "torchkeeper: torch のインストールが見つかりません", "初回起動"),
    ("C", "torchkeeper: no torch installs found", "first run"),
])
def test_the_first_run_toast_in_the_os_language(lang, title, first, tmp_path, tk_home):
    """A first run (no config yet) in an empty home: the one toast it gives, in the OS's language."""
    env = {**_env(lang), "HOME": tmp_path / "user", "DISPLAY": None, "WAYLAND_DISPLAY": None}
    (tmp_path / "user").mkdir()
    p = agentkit.spawn_agent(tk_home, env)
    try:
        toasts = agentkit.wait_for(lambda: agentkit.events(tk_home, "toast"), 90, "the first-run toast")
    finally:
        agentkit.end_process(p)
    assert [t["title"] for t in toasts] == [title], toasts
    said = p.stdout.read()
    assert first in said, said      # what the terminal that started it reads


@pytest.mark.parametrize("lang, labels", [
    ("zh_TW", ["全部重新套用", "立即檢查", "暫停自動重新套用", "開啟 torchkeeper", "顯示總覽"]),
    ("zh_CN", ["全部重新应用", "立即检查", "暂停自动重新应用", "打开 torchkeeper", "显示概览"]),
    ("ja", ["すべて再適用", "今すぐ確認", "自動再適用を一時停止", "torchkeeper を開く", "概要を表示"]),
    ("en", ["Reapply all", "Check now", "Pause auto re-apply", "Open torchkeeper", "Show overview"]),
])
def test_the_tray_menu_in_each_language(lang, labels, tmp_path):
    """The menu pystray's dummy backend builds (the same model every backend shows)."""
    from tray_demo import FakeController
    from torchkeeper.desktop import tray

    i18n.activate(lang)
    try:
        t = tray.Tray(FakeController(root=tmp_path), backend="dummy", opener=lambda p: True)
        texts = [i.text for i in t.icon.menu]
        sub = [i.text for i in next(i for i in t.icon.menu if i.submenu).submenu]
    finally:
        i18n.activate("en")
    assert texts[3:8] == labels, texts
    assert len(set(sub) & {"Reapply", "Revert to stock"}) == (2 if lang == "en" else 0), sub


def test_no_message_hides_inside_an_f_string():
    """Babel's extractor does not look inside f-strings: a _() there never reaches a catalog."""
    hidden = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.JoinedStr):
                hidden += [f"{path.relative_to(REPO)}:{c.lineno}" for c in ast.walk(node) if isinstance(c, ast.Call)
                           and isinstance(c.func, ast.Name) and c.func.id in ("_", "ngettext", "N_")]
    assert not hidden, hidden


@pytest.mark.parametrize("lang, html_lang, words", [
    ("zh_TW", "zh-Hant-TW", ["目標", "組合包", "設定", "覆蓋已失效", "重新套用", "還原為原始檔案"]),
    ("zh_CN", "zh-Hans-CN", ["目标", "组合包", "设置", "覆盖已失效", "重新应用", "还原为原始文件"]),
    ("ja", "ja", ["ターゲット", "バンドル", "設定", "オーバーレイ解除", "再適用", "標準ファイルに戻す"]),
    ("en", "en", ["Targets", "Bundles", "Settings", "overlay undone", "Reapply", "Revert to stock"]),
])
def test_the_dashboard_pages_in_each_language(lang, html_lang, words):
    """The agent serves the pages in its language (the HTML says which, for the browser's fonts)."""
    from torchkeeper.dashboard import pages

    status = {"targets": [{"name": "a1111", "state": "drifted", "torch_version": "2.3.1+cu121",
                           "torch_cuda": "12.1", "cudnn_stock": "8.8.1", "cudnn_now": "8.8.1"}], "driver": None}
    i18n.activate(lang)
    try:
        html = pages.layout("T", pages.targets_page(status, [], "C"), "C")
    finally:
        i18n.activate("en")
    assert f'<html lang="{html_lang}">' in html
    missing = [w for w in words if w not in html]
    assert not missing, missing


def test_a_console_without_the_characters_shows_question_marks_not_a_traceback(run_tk):
    """Japanese asked for where stdout's encoding has no kana (a cp1252 pipe on Windows): the
    command still works; PYTHONUTF8 off and PYTHONIOENCODING=ascii play that console here."""
    r = run_tk("status", extra_env={"TORCHKEEPER_LANG": "ja", "PYTHONUTF8": "0", "PYTHONIOENCODING": "ascii"})
    assert r.rc == 0 and "Traceback" not in r.err and "?" in r.out, r


@pytest.mark.parametrize("lang, words", [
    ("zh_TW.UTF-8", ["用法：", "選項", "還原原始檔案", "機器可讀的輸出"]),
    ("zh_CN.UTF-8", ["用法：", "选项", "还原原始文件", "机器可读的输出"]),
    ("ja_JP.UTF-8", ["使い方: ", "オプション", "標準ファイルに戻す", "機械可読な出力"]),
    ("C", ["usage: ", "options", "restore the stock files", "machine-readable output"]),
])
def test_help_in_each_language(lang, words, run_tk):
    r = run_tk("revert", "--help", extra_env=_env(lang))
    assert r.rc == 0 and all(w in r.out for w in words), r


def test_the_agent_takes_a_language_change_in_the_config(tk_home, monkeypatch):
    """[ui] language changed while the agent runs: its tooltip (and every toast after) follows."""
    monkeypatch.delenv("TORCHKEEPER_LANG")
    agentkit.write_config(tk_home, '[ui]\nlanguage = "en"\n')
    agent = agentkit.start_agent(tk_home, watch=False, schedule=False)
    try:
        assert agent.view().tooltip.startswith("torchkeeper: no targets yet")
        agentkit.write_config(tk_home, '[ui]\nlanguage = "zh_CN"\n')
        agent._reload_config()
        assert agent.view().tooltip.startswith("torchkeeper：尚无目标"), agent.view().tooltip
    finally:
        agent.stop(10)
        i18n.activate("en")
