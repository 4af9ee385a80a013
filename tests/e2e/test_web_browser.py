"""A real browser through the recipient's whole flow: headless Chromium
(Debian's chromium and chromium-driver) driven by Selenium signs in from the
mailed link, changes the target, confirms it from the mail it gets, adds a
second target (confirmed the same way) and removes it, sets its own policy
(softfail refused, which the milter then applies; a trusted forwarder added
and removed), and deletes the forwarding; the milter then answers 551.

Each page is saved as a screenshot in a temporary folder, or in the folder
that ``FWDWEB_SCREENSHOTS`` names (``FWDWEB_SCREENSHOTS=docs/web`` renews
the pictures in docs/web.md).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from fwdmilter.config import StoreSettings
from fwdmilter.store import open_store
from tests.harness.fwdmilter_proc import FwdMilter
from tests.harness.mail_fixtures import BorderFactory, MailWorld
from tests.harness.postfix import RuntimeDir
from tests.harness.proc import free_port
from tests.harness.smtp import unique
from tests.harness.web_proc import FwdWeb, link_in, web_settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    if not (shutil.which(CHROMIUM) and shutil.which(DRIVER)):
        pytest.fail("Debian's chromium and chromium-driver are needed (scripts/test installs them)")
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1024,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_browser_signs_in_changes_target_confirms_and_deletes(
    browser: object,
    mail: MailWorld,
    runtime: RuntimeDir,
    border_factory: BorderFactory,
    tmp_path: Path,
) -> None:
    d: object = browser
    shots = Path(os.environ.get("FWDWEB_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    port = free_port()
    fm = FwdMilter(
        runtime.socket("fwd-web-browser"),
        tmp_path / "milter",
        dns_port=mail.dns.port,
        settings={"web": web_settings(port)},
    )
    border = border_factory(milter=fm.spec, start=False)
    fm.serve(border)
    border.start()
    web = FwdWeb(fm, tmp_path / "web", port=port)
    web.start()
    try:
        tok = unique()
        rcpt = f"bob.{tok}@fwd.example"
        target = f"bob+{tok}@inner.example"
        new = f"carol+{tok}@inner.example"
        third = f"dave+{tok}@inner.example"
        fm.fwdctl("forward", "set", rcpt, target, "--contact", "bob@mobile.example")

        def shot(name: str) -> None:
            # The whole page: the window as tall as the document.
            height = d.execute_script("return document.documentElement.scrollHeight")  # type: ignore[attr-defined]
            d.set_window_size(1024, max(600, min(int(height) + 140, 4000)))  # type: ignore[attr-defined]
            d.save_screenshot(str(shots / f"{name}.png"))  # type: ignore[attr-defined]

        def wait_for_text(text: str) -> None:
            """After a click: the next page has loaded once it shows ``text``."""
            from selenium.webdriver.support.ui import WebDriverWait  # noqa: PLC0415

            WebDriverWait(d, 15).until(lambda drv: text in drv.page_source)

        def find(css: str) -> object:
            return d.find_element(By.CSS_SELECTOR, css)  # type: ignore[attr-defined]

        def body_of(to: str, subject: str) -> str:
            msg = mail.wait_for(to, match=lambda m: subject in str(m.email["Subject"]))
            part = msg.email.get_body(("plain",))
            assert part is not None
            return str(part.get_content())  # type: ignore[attr-defined]

        d.get(web.url("/"))  # type: ignore[attr-defined]
        shot("1-sign-in")
        find("#address").send_keys(rcpt)  # type: ignore[attr-defined]
        find("#send-link").click()  # type: ignore[attr-defined]
        wait_for_text("Check your mail")
        shot("2-check-your-mail")

        link = link_in(body_of(target, "Sign in to manage"), web.base_url, "/sign-in/")
        d.get(link)  # type: ignore[attr-defined]
        shot("3-sign-in-link")
        find("#sign-in").click()  # type: ignore[attr-defined]
        wait_for_text("Where its mail goes")
        assert find("#target").text == target  # type: ignore[attr-defined]
        shot("4-your-record")

        find("#target-input").send_keys(new)  # type: ignore[attr-defined]
        find("#save").click()  # type: ignore[attr-defined]
        wait_for_text("Waiting for confirmation")
        assert new in find("#pending").text  # type: ignore[attr-defined]
        shot("5-target-pending")

        link = link_in(body_of(new, "Confirm forwarding"), web.base_url, "/confirm/")
        d.get(link)  # type: ignore[attr-defined]
        shot("6-confirm")
        find("#confirm").click()  # type: ignore[attr-defined]
        wait_for_text("now forwarded to " + new)
        shot("7-confirmed")

        # A second target: it joins the first once confirmed, then goes again.
        d.get(web.url("/me"))  # type: ignore[attr-defined]
        wait_for_text("Where its mail goes")
        find("#add-target-input").send_keys(third)  # type: ignore[attr-defined]
        find("#save").click()  # type: ignore[attr-defined]
        wait_for_text("Waiting for confirmation")
        link = link_in(body_of(third, "Confirm forwarding"), web.base_url, "/confirm/")
        d.get(link)  # type: ignore[attr-defined]
        wait_for_text("too, and will go on doing so")
        find("#confirm").click()  # type: ignore[attr-defined]
        wait_for_text(f"now forwarded to {new}, {third}")
        d.get(web.url("/me"))  # type: ignore[attr-defined]
        wait_for_text("Where its mail goes")
        assert find("#target").text == f"{new}, {third}"  # type: ignore[attr-defined]
        shot("9-two-targets")
        d.find_element(  # type: ignore[attr-defined]
            By.XPATH, f"//input[@name='remove_target'][@value='{third}']/following-sibling::button"
        ).click()
        wait_for_text("Saved.")

        d.get(web.url("/me"))  # type: ignore[attr-defined]
        wait_for_text("Where its mail goes")
        assert find("#target").text == new  # type: ignore[attr-defined]

        # The recipient's own policy: softfail refused, the sender kept, a
        # trusted forwarder added (a bad one first), then removed.
        assert find("#spf-softfail").text == "accepted (site default)"  # type: ignore[attr-defined]
        Select(find("#spf-softfail-input")).select_by_value("reject")
        find("#rewrite-input input[value='none']").click()  # type: ignore[attr-defined]
        find("#save-policy").click()  # type: ignore[attr-defined]
        wait_for_text("Saved.")
        assert find("#spf-softfail").text == "refused (your choice)"  # type: ignore[attr-defined]
        assert find("#rewrite").text == "kept for verified mail (your choice)"  # type: ignore[attr-defined]
        # The milter applies it: softfail mail for this address is refused...
        t = mail.send_from_outside(border, f"s{tok}@softfail.example", [rcpt], "softfail")
        assert str(t.rcpt(rcpt)).startswith("550 "), t
        find("#add-trusted-input").send_keys("alumni..example")  # type: ignore[attr-defined]
        find("#add-trusted").click()  # type: ignore[attr-defined]
        wait_for_text("neither a network (CIDR) nor a domain")
        find("#add-trusted-input").send_keys("Alumni.Example")  # type: ignore[attr-defined]
        find("#add-trusted").click()  # type: ignore[attr-defined]
        wait_for_text("Saved.")
        assert find("#trusted td.forwarder").text == "alumni.example"  # type: ignore[attr-defined]
        shot("10-policy")
        # What the web set is the store's Forward, the record the milter reads...
        store = open_store(StoreSettings(url=fm.settings["store"]["url"]))
        try:
            fwd = store.get_forward(rcpt)
            assert fwd is not None
            assert fwd.spf_action("softfail") == "reject" and fwd.spf_action("fail") == ""
            assert (fwd.rewrite, fwd.trusted) == ("none", ("alumni.example",))
        finally:
            store.close()
        # ... and from a trusted forwarder (alumni.example's SPF lists the
        # client) the same mail skips the sender's verdict.
        t = mail.send_from_outside(border, f"s{tok}@softfail.example", [rcpt], "trusted")
        assert str(t.rcpt(rcpt)).startswith("250 "), t
        d.find_element(  # type: ignore[attr-defined]
            By.XPATH,
            "//input[@name='remove_trusted'][@value='alumni.example']/following-sibling::button",
        ).click()
        wait_for_text('<p id="trusted">None yet.</p>')  # the page before said "Saved." too

        find("#moved_to").send_keys(f"bob@{tok}.example")  # type: ignore[attr-defined]
        find("#really").click()  # type: ignore[attr-defined]
        find("#delete").click()  # type: ignore[attr-defined]
        wait_for_text("Forwarding deleted")
        shot("8-deleted")

        t = mail.send_from_outside(border, f"s{tok}@pass.example", [rcpt], "after")
        assert str(t.rcpt(rcpt)) == f"551 5.1.6 User not local; please try <bob@{tok}.example>"
        assert len(list(shots.glob("*.png"))) >= 10
    finally:
        web.stop()
        fm.stop()
