"""The page's picture in the README: serve a checkpoint, type a review into headless Chromium, save the page.

python -m bench.screenshot --ckpt_path RUN/checkpoints/best-....ckpt --out docs/serving.png
"""

import argparse
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parents[1]
REVIEW = (
    "I expected a dull remake, but the cast is wonderful and the script is sharp. The middle drags a little, "
    "and the villain is a cliché, yet the last half hour is brilliant. Not perfect, but well worth seeing."
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt_path", required=True)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "serving.png")
    p.add_argument("--text", default=REVIEW)
    args = p.parse_args()
    server = subprocess.Popen([sys.executable, "cli.py", "serve", "--ckpt_path", args.ckpt_path, "--port", "0"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)  # fmt: skip
    url = re.search(r"on (http://[\d.]+:\d+/)", server.stdout.readline())[1]
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,760"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "health")
                break
            except urllib.error.HTTPError:
                time.sleep(0.05)
        browser.get(url)
        WebDriverWait(browser, 30).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#target option")) > 1)
        browser.find_element(By.ID, "text").send_keys(args.text)
        browser.find_element(By.ID, "submit").click()
        WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "[data-testid=review] .w"))
        browser.save_screenshot(str(args.out))
        print(f"wrote {args.out}")
    finally:
        browser.quit()
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
