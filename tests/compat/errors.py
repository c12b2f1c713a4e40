class AppError(Exception):
    def __init__(self, code, detail):
        super().__init__(f"{code}: {detail}")
        self.code = code


def risky(n):
    if n < 0:
        raise ValueError("negative")
    if n == 0:
        raise AppError(7, "zero")
    return 10 / n


def depth(n):
    return 0 if n == 0 else 1 + depth(n - 1)


def _else():
    try:
        value = int("12")
    except ValueError:
        return "bad"
    else:
        return value * 2


def main(x):
    caught = []
    for n in (-1, 0, 2):
        try:
            caught.append(risky(n))
        except ValueError as e:
            caught.append(["ValueError", str(e)])
        except AppError as e:
            caught.append(["AppError", e.code, str(e)])
        finally:
            caught.append("finally")
    try:
        try:
            {}["missing"]
        except KeyError as e:
            raise RuntimeError("wrapped") from e
    except RuntimeError as e:
        chained = [str(e), type(e.__cause__).__name__]
    with_result = []

    class Ctx:
        def __enter__(self):
            with_result.append("enter")
            return self

        def __exit__(self, *exc):
            with_result.append(exc[0].__name__ if exc[0] else "clean")
            return True

    with Ctx():
        raise IndexError("suppressed")
    return {"caught": caught, "chained": chained, "with": with_result, "depth": depth(500), "else": _else()}
