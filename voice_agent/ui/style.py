"""How the app looks: the CSS, the theme and the header's microphone icon.

System fonts only: the app may run offline, and a web font download would stall
the first paint.
"""

from __future__ import annotations

import gradio as gr

MIC_SVG = (
    '<svg class="va-logo" viewBox="0 0 24 24" width="26" height="26" fill="none" '
    'stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round" '
    'aria-hidden="true"><rect x="9" y="2" width="6" height="12" rx="3"/>'
    '<path d="M5 10a7 7 0 0 0 14 0"/><line x1="12" y1="17" x2="12" y2="22"/></svg>'
)

CSS = """
.gradio-container { max-width: 1240px !important; margin: 0 auto !important; }
#va-header { display: flex; align-items: center; gap: 10px; padding: 4px 2px 0; flex-wrap: wrap; }
#va-header h1 { font-size: 1.55rem; margin: 0; font-weight: 700; letter-spacing: -0.01em; }
#va-header .tag { color: var(--body-text-color-subdued); font-size: 0.95rem; margin-left: 6px; }
.banner { border-radius: 10px; padding: 10px 14px; margin: 2px 0; font-size: 0.92rem;
  display: flex; flex-wrap: wrap; gap: 6px 18px; align-items: center; }
.banner.loading { background: var(--color-accent-soft); border: 1px solid var(--border-color-accent); }
.banner.degraded { display: block; background: #fff7ed; color: #7c2d12; border: 1px solid #fdba74; }
.dark .banner.degraded { background: #431407; color: #fed7aa; border-color: #9a3412; }
.banner.degraded ul { margin: 4px 0 0 18px; padding: 0; }
.banner .reason { opacity: 0.8; font-size: 0.86rem; }
.load-item { display: inline-flex; gap: 6px; align-items: center; }
.load-item.done { opacity: 0.75; }
.load-item .bar { display: inline-block; width: 70px; height: 6px; border-radius: 3px;
  background: var(--border-color-primary); overflow: hidden; }
.load-item .bar span { display: block; height: 100%; background: var(--color-accent); }
.spinner { width: 12px; height: 12px; border-radius: 50%; border: 2px solid var(--color-accent);
  border-right-color: transparent; animation: va-spin 0.8s linear infinite; }
@keyframes va-spin { to { transform: rotate(360deg); } }
#open-diagnostics { max-width: 200px; }
#composer { align-items: stretch; }
#composer textarea { font-size: 1rem; }
#turn-status { min-height: 1.4em; color: var(--body-text-color-subdued); font-size: 0.88rem; }
#turn-status p { margin: 0; }
.turn-latency { display: inline-block; font-size: 0.78rem; color: var(--body-text-color-subdued);
  margin-top: 2px; }
#voice-panel .section-title { font-weight: 600; margin: 0 0 2px; }
.va-mic { display: flex; align-items: center; gap: 10px; flex-wrap: wrap; padding: 4px 0; }
.va-mic-button { padding: 7px 16px; border-radius: var(--button-large-radius, 8px); cursor: pointer;
  font-weight: 600; border: 1px solid var(--button-primary-border-color);
  background: var(--button-primary-background-fill); color: var(--button-primary-text-color); }
.va-mic[data-state="on"] .va-mic-button { background: var(--button-cancel-background-fill);
  color: var(--button-cancel-text-color); border-color: var(--button-cancel-border-color); }
.va-mic[data-state="on"] .va-mic-button::before { content: ""; display: inline-block; width: 8px;
  height: 8px; margin-right: 8px; border-radius: 50%; background: currentColor;
  opacity: var(--va-level, 1); }
.va-mic-status { flex: 1; min-width: 160px; font-size: 0.88rem; color: var(--body-text-color-subdued); }
.diag-grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(180px, 1fr)); gap: 10px; }
.diag-card { border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 10px 12px;
  background: var(--background-fill-secondary); }
.diag-card.good { border-left: 4px solid #16a34a; }
.diag-card.bad { border-left: 4px solid #ea580c; }
.diag-card.warn { border-left: 4px solid #ca8a04; }
.diag-k { font-size: 0.75rem; text-transform: uppercase; letter-spacing: 0.06em;
  color: var(--body-text-color-subdued); }
.diag-v { font-size: 1.05rem; font-weight: 600; margin-top: 2px; }
.diag-sub { font-size: 0.8rem; color: var(--body-text-color-subdued); margin-top: 2px; }
.model-grid { display: grid; gap: 12px; }
.model-card { border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 12px 14px; }
.model-head { font-size: 1.02rem; margin-bottom: 6px; }
.diag-kv { display: grid; grid-template-columns: repeat(auto-fill, minmax(210px, 1fr));
  gap: 4px 18px; margin: 4px 0 10px; font-size: 0.88rem; }
.diag-kv .kv { display: flex; flex-direction: column; min-width: 0; }
.diag-kv .kv.wide { grid-column: 1 / -1; }
.diag-kv .k { font-size: 0.72rem; text-transform: uppercase; letter-spacing: 0.05em;
  color: var(--body-text-color-subdued); }
.diag-kv .v { overflow-wrap: anywhere; }
#diag-models table.diag-table, #diag-models .diag-table th, #diag-models .diag-table td {
  border: none !important; }
.diag-table { border-collapse: collapse !important; width: 100%; font-size: 0.84rem; }
#diag-models .diag-table tr + tr td { border-top: 1px solid var(--border-color-primary) !important; }
.diag-table th, .diag-table td { padding: 4px 8px !important; text-align: left;
  vertical-align: top; background: transparent !important; }
.diag-table th { color: var(--body-text-color-subdued); font-weight: 500; font-size: 0.75rem;
  text-transform: uppercase; letter-spacing: 0.04em; }
#diag-actions { gap: 8px; }
.va-logo { color: var(--color-accent); align-self: center; }
.via-voice { display: inline-block; font-size: 0.7rem; font-weight: 600; text-transform: uppercase;
  letter-spacing: 0.05em; padding: 0 6px; margin-right: 4px; border-radius: 999px;
  background: var(--color-accent-soft); color: var(--color-accent); vertical-align: middle; }
.turn-note { display: inline-block; font-size: 0.85rem; font-style: italic;
  color: var(--body-text-color-subdued); }
.pill { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 0.75rem;
  font-weight: 600; background: var(--background-fill-secondary);
  border: 1px solid var(--border-color-primary); }
.pill-ready, .pill-chosen, .pill-found { background: #dcfce7; color: #166534; border-color: #86efac; }
.pill-failed, .pill-not-loaded { background: #fee2e2; color: #991b1b; border-color: #fca5a5; }
.pill-skipped { background: #fef9c3; color: #854d0e; border-color: #fde047; }
.pill-loading, .pill-pending { background: #e0e7ff; color: #3730a3; border-color: #a5b4fc; }
.diag-error { background: #fef2f2; color: #991b1b; border-radius: 8px; padding: 6px 10px;
  font-size: 0.86rem; margin: 4px 0 8px; white-space: pre-wrap; }
.dark .diag-error { background: #450a0a; color: #fecaca; }
.diag-notes { margin: 0 0 8px 18px; font-size: 0.85rem; }
.diag-muted { color: var(--body-text-color-subdued); font-size: 0.85rem; }
.env-grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(340px, 1fr)); gap: 12px; }
.diag-section { border: 1px solid var(--border-color-primary); border-radius: 10px;
  padding: 10px 14px; margin-top: 12px; }
.diag-section h4 { margin: 0 0 6px; }
.diag-versions { display: flex; flex-wrap: wrap; gap: 4px 16px; font-size: 0.85rem; }
"""


def theme() -> gr.themes.Base:
    """A calm theme with system fonts (no web-font download: the app may run offline)."""
    return gr.themes.Soft(
        primary_hue="indigo",
        secondary_hue="slate",
        neutral_hue="slate",
        radius_size="md",
        font=(
            "ui-sans-serif",
            "system-ui",
            "Segoe UI",
            "Roboto",
            "Helvetica",
            "Arial",
            "sans-serif",
        ),
        font_mono=("ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"),
    )
