// Starts the GOV.UK Frontend components. A module script runs only in browsers that
// support ES modules, which is what govuk-frontend-supported means; no inline script (CSP).
import { initAll } from "/static/govuk/govuk-frontend.min.js";

document.body.classList.add("js-enabled", "govuk-frontend-supported");
initAll();
