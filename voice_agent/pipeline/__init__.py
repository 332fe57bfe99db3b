"""The conversation pipeline: the cached loader and one admission gate per engine (`models`,
`admission`), and the turn (`agent`) as its stages `hear` -> `think` -> `speak` -> `relay`."""
