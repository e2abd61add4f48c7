"""Why our own configuration validators refuse a value: a stable code with parameters.

Decision: a validator of ``service.tenant_config`` or of the partner directory
(``service.partners``) raises :class:`ConfigValueError`, a ``ValueError`` whose text is the
English sentence it always said, carrying a stable ``code``, its ``params`` and ``loc``
(where inside the validated value) as well.

* The JSON admin API and the command line keep answering in English exactly as before:
  pydantic turns the error into ``"Value error, <text>"`` as for any ValueError, and
  their answers are made of that text only.
* The admin screen reads the same error back from pydantic's error (``ctx["error"]``,
  see ``service.admin.config.issue_reason``) and says the catalogue message
  ``admin.problem.<code>`` in the admin's language, ``params`` shown in it as data and
  ``loc`` as the place inside the field. So no English sentence of ours ends up inside a
  translated one, and the code, not the wording, is what the screen depends on: the
  English text may be reworded without touching the catalogues, and a code is never
  renamed (each has a message in ``service/locales/{nl,fr,en}/admin.po``).

Codes are shared where the meaning is the same (``missing``, ``id-twice``,
``not-allowed`` of pydantic's own errors), so a screen says one thing one way.
"""

from __future__ import annotations

#: A place inside a validated value, as pydantic writes its error locations:
#: ``("entries", 2, "website")`` is the third entry's website.
Loc = tuple[str | int, ...]


class ConfigValueError(ValueError):
    """A value our validators refuse: ``str()`` is the English sentence (API, CLI);
    ``code``, ``params`` and ``loc`` say the same for a screen to translate."""

    def __init__(self, message: str, code: str, loc: Loc = (), **params: object) -> None:
        super().__init__(message)
        self.code = code
        self.loc = loc
        self.params = {name: str(value) for name, value in params.items()}
