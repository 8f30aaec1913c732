/**
 * The entry point `{% broadcast_client %}` loads: binds the page's live tags.
 * A module script runs once the document is parsed, so every tag is there already.
 *
 * @module page
 */

import { bindPage } from "./live.js";

bindPage();
