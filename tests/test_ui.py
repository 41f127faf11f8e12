"""The dashboard in a real browser: Playwright drives Debian's Chromium (installed by .ci/run)
against a real server holding ``make run``'s data (every example export, ingested with the
Makefile's own commands). Screenshots go to ``test-output/screenshots/``; the README's picture
of the outcomes page is one of them."""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from adapter.config import ROOT, Settings
from adapter.ingest import ingest_file
from adapter.outcomes.render import _fmt_km
from adapter.store import Store
from tests.server import Server, _post_export

SHOTS = ROOT / "test-output" / "screenshots"
CHROMIUM = "/usr/bin/chromium"


def make_run_ingests() -> list[tuple[Path, str, str]]:
    """(file, site, mapping) of every ``adapter ingest`` line of the Makefile's ``run`` target."""
    out = []
    for line in (ROOT / "Makefile").read_text().splitlines():
        if "adapter ingest " in line:
            args = shlex.split(line.split("adapter ingest ", 1)[1])
            out.append((ROOT / args[0], args[args.index("--site") + 1], args[args.index("--mapping") + 1]))
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, settings: Settings) -> Iterator[Server]:
    d = tmp_path_factory.mktemp("ui")
    store = Store(f"sqlite:///{d}/ui.sqlite3")
    store.migrate()
    runs = make_run_ingests()
    assert len(runs) == 11
    for path, site, mapping in runs:
        assert ingest_file(path, site, mapping, store, settings=settings).rows_rejected == 0
    srv = Server(store, settings)
    # an export with one bad row (a result that is not a number), as a site would post it
    src = ROOT / "examples" / "hito" / "hito_erm_citometria.csv"
    lines = src.read_bytes().split(b"\n")
    lines[3] = re.sub(rb";[0-9]+,[0-9]+;%;", b";abc;%;", lines[3], count=1)
    bad = d / "hito_erm_citometria_bad.csv"
    bad.write_bytes(b"\n".join(lines))
    r = _post_export(srv.client, bad, "hito", "erm_citometria")
    assert r.status_code == 200
    sub = {"resourceType": "Subscription", "status": "off", "reason": "MRD results for the EHR",
           "criteria": "Observation?_site=hito", "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook"}}
    assert srv.client.post("/Subscription", json=sub).status_code == 201
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    try:
        yield pg
    finally:
        ctx.close()


def _shot(page: Page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


def _accessible(page: Page) -> None:
    """Labels, alternative text, table captions and header scopes, and text contrast (WCAG AA 4.5:1)."""
    unlabeled = page.evaluate("""() => [...document.querySelectorAll('select, input:not([type=hidden]), textarea')]
        .filter(e => !(e.id && document.querySelector(`label[for="${e.id}"]`)) && !e.getAttribute('aria-label')).length""")
    assert unlabeled == 0
    assert page.evaluate("() => [...document.querySelectorAll('img')].every(i => i.alt && i.alt.length > 10)")
    assert page.evaluate("() => [...document.querySelectorAll('table')].every(t => t.caption && t.caption.textContent.trim())")
    assert page.evaluate("() => [...document.querySelectorAll('thead th')].every(h => h.getAttribute('scope') === 'col')")
    ratios = page.evaluate("""() => {
        const lum = c => { const [r, g, b] = c.match(/\\d+/g).slice(0, 3).map(v => { v /= 255;
            return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); }); return 0.2126*r + 0.7152*g + 0.0722*b; };
        const bg = e => { while (e) { const c = getComputedStyle(e).backgroundColor;
            if (c && !c.startsWith('rgba(0, 0, 0, 0)')) return c; e = e.parentElement; } return 'rgb(255, 255, 255)'; };
        return [...document.querySelectorAll('a, td, th, p, label, h1, caption')].slice(0, 300).map(e => {
            const a = lum(getComputedStyle(e).color), b = lum(bg(e));
            return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05); }); }""")
    assert ratios and min(ratios) >= 4.5, min(ratios)


def _os_cell(page: Page, site: str) -> str:
    return page.locator(f'tr[data-figure="OS"] td[data-column="{site}"]').inner_text()


def test_outcomes_page_follows_the_time_point(served: Server, page: Page) -> None:
    page.goto(f"{served.base}/ui")
    assert page.url.endswith("/ui/outcomes")
    columns = page.locator("#outcomes thead th").all_inner_texts()
    api = served.client.get("/outcomes", params={"timepoint": "36"}).json()
    assert columns == ["Figure", *api["sites"], "pooled"] and len(api["sites"]) == 8
    at_36 = _os_cell(page, "hito")
    api_36 = api["sites"]["hito"]["survival"]["os"]
    assert at_36 == _fmt_km(api_36)
    for img in page.locator("figure img").all():
        assert page.evaluate("i => i.complete && i.naturalWidth > 0", img.element_handle())
    _accessible(page)
    shot = _shot(page, "outcomes")
    # keyboard only: focus the time-point selector, choose 6 months, Tab to Show, Enter
    page.focus("#timepoint")
    page.keyboard.press("End")  # 60 months
    page.keyboard.press("Home")  # 6 months (HITO's OS differs there from 36 months: deaths in between)
    assert page.eval_on_selector("#timepoint", "s => s.value") == "6"
    page.keyboard.press("Tab")  # to the Show button
    assert page.evaluate("() => document.activeElement.textContent") == "Show"
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "timepoint=6" in page.url
    api_6 = served.client.get("/outcomes", params={"timepoint": "6"}).json()["sites"]["hito"]["survival"]["os"]
    assert _os_cell(page, "hito") == _fmt_km(api_6) != at_36
    downloads = {a.inner_text(): a.get_attribute("href") for a in page.locator("main p a[download]").all()}
    assert set(downloads) == {"outcomes.csv", "OS curves (PNG)", "RFS curves (PNG)"}
    for href in downloads.values():
        r = served.client.get(href)
        assert r.status_code == 200 and "timepoint=6" in href
    assert served.client.get(downloads["OS curves (PNG)"]).content[:8] == b"\x89PNG\r\n\x1a\n"
    readme_shot = ROOT / "docs" / "outcomes-page.png"  # the README's picture (refreshed by this test)
    readme_shot.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, readme_shot)


def test_ingestions_page_opens_a_rejected_rows_details(served: Server, page: Page) -> None:
    page.goto(f"{served.base}/ui/ingestions")
    _accessible(page)
    rows = page.locator("#ingestions tbody tr")
    assert rows.count() >= 11  # make run's 10 ingestions and the bad file
    rejected = page.locator("#ingestions tbody tr", has=page.locator(".error")).first
    assert rejected.locator("td").nth(0).inner_text() == "hito"
    _shot(page, "ingestions")
    rejected.get_by_role("link").click()
    page.wait_for_selector("#row-issues")
    cells = page.locator("#row-issues tbody tr").first.locator("td").all_inner_texts()
    assert cells[0] == "hito_erm_citometria_bad.csv" and cells[2] == "4"  # file, row (the 4th line of the file)
    assert cells[3] == "Resultado" and cells[4] == "abc" and cells[5]
    _accessible(page)
    _shot(page, "ingestion-row-issues")


def test_subscriptions_page_lists_status_backlog_and_errors(served: Server, page: Page) -> None:
    page.goto(f"{served.base}/ui/subscriptions")
    _accessible(page)
    row = page.locator("#subscriptions tbody tr").first.locator("td").all_inner_texts()
    assert row[1] == "off" and row[2] == "Observation?_site=hito" and row[3] == "127.0.0.1:9"
    assert row[5] == "0" and row[4] == "–"
    _shot(page, "subscriptions")


